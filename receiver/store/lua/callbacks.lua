-- Callbacks of the jobs given. Own ARGV: where the news came from (callback | reconcile),
-- the number of callbacks n, then n triples (the job's number among those given, task id,
-- done | faulted). Returns one code per callback: accepted, duplicate, early, closed,
-- unknown_job or unknown_task (an accepted one that ended its job: accepted:<status>).
local out = {}
local source, n = ARGV[FIRST], tonumber(ARGV[FIRST + 1])
local jobs = {}
for i = 0, n - 1 do
  local base = FIRST + 2 + i * 3
  local number, t, status = tonumber(ARGV[base]), ARGV[base + 1], ARGV[base + 2]
  local k = jobs[number]
  if not k then
    k = job(number)
    jobs[number] = k
  end
  local h = call('HMGET', k.hash, 'status', 'submitting', 'total')
  local code
  if not h[1] then
    code = CODE.unknown_job
  elseif TERMINAL[h[1]] then
    code = CODE.closed
  else
    code = apply(k, t, status, source)
    -- A callback can beat the submission's answer: keep it until the task ids are known.
    if code == CODE.unknown_task and h[2] then
      if call('HLEN', k.early) < (tonumber(h[3]) or 0) then
        call('HSETNX', k.early, t, status)
        code = CODE.early
      end
    end
  end
  out[i + 1] = code
end
return out

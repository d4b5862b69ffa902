-- Updates of the jobs given. Own ARGV: the number of updates n, then n updates, each: the
-- job's number among those given, event type ('' for none), JSON detail, number of fields
-- f, then f field/value pairs to set ('status' moves the status). Returns one code per
-- update: updated, poll_now, closed or unknown_job.
local function update(k, etype, detail, first, last)
  local status = call('HGET', k.hash, 'status')
  if not status then return CODE.unknown_job end
  if TERMINAL[status] then return CODE.closed end
  local fields, polled_at = {}, nil
  for i = first, last, 2 do
    if ARGV[i] == 'status' then
      set_status(k, ARGV[i + 1])
    else
      if ARGV[i] == 'polled_at' then polled_at = ARGV[i + 1] end
      fields[#fields + 1] = ARGV[i]
      fields[#fields + 1] = ARGV[i + 1]
    end
  end
  call('HSET', k.hash, 'updated_at', NOW, unpack(fields))
  if etype ~= '' then emit(k, etype, cjson.decode(detail)) end
  -- A poll's record: the poll worked, so its retries start over; and a webhook that asked
  -- for a poll while this one ran (hint_poll's `poll_now`) makes the next one due at once.
  if polled_at then
    call('HDEL', k.attempts, WORK.poll)
    call('HDEL', k.hash, 'consecutive_failures', 'last_error')
    if call('HDEL', k.hash, 'poll_now') == 1 then
      call('HSET', k.hash, 'next_poll_at', polled_at)
      return CODE.poll_now
    end
  end
  return CODE.updated
end

local out, jobs = {}, {}
local i = FIRST + 1
for n = 1, tonumber(ARGV[FIRST]) do
  local number, f = tonumber(ARGV[i]), tonumber(ARGV[i + 3])
  local k = jobs[number]
  if not k then
    k = job(number)
    jobs[number] = k
  end
  out[n] = update(k, ARGV[i + 1], ARGV[i + 2], i + 4, i + 3 + 2 * f)
  i = i + 4 + 2 * f
end
return out

-- Tasks of the jobs given that ended. Own ARGV: the number of outcomes n, then n groups of
-- five: the job's number among those given, task id, outcome (stored | failed | expired),
-- the compressed results (stored) or the reason, the results TTL in seconds. Returns one
-- code per outcome (one that ended its job: <outcome>:<status>).
local function outcome_of(k, t, outcome, value, ttl)
  local status = call('HGET', k.hash, 'status')
  if not status then return CODE.unknown_job end
  if TERMINAL[status] then return CODE.closed end
  local current = call('HGET', k.tasks, t)
  if not current then return CODE.unknown_task end
  if current == TASK.stored or current == TASK.failed or current == TASK.expired then
    return CODE.duplicate
  end
  if outcome == CODE.stored then
    call('HSET', k.results, t, value)
    call('EXPIRE', k.results, tonumber(ttl))
    call('HSET', k.tasks, t, TASK.stored)
    call('HINCRBY', k.hash, 'completed', 1)
    call('HDEL', k.hash, 'consecutive_failures', 'last_error')
    emit(k, 'task.completed', {task_id = t})
  else
    call('HSET', k.tasks, t, outcome)
    call('HSET', k.errors, t, value)
    call('HINCRBY', k.hash, 'failed', 1)
    if outcome == CODE.expired then call('HINCRBY', k.hash, 'expired', 1) end
    emit(k, 'task.failed', {task_id = t, reason = value})
  end
  call('HSET', k.hash, 'updated_at', NOW)
  return ending(outcome, settle(k))
end

local out, jobs = {}, {}
for i = 0, tonumber(ARGV[FIRST]) - 1 do
  local base = FIRST + 1 + i * 5
  local number = tonumber(ARGV[base])
  local k = jobs[number]
  if not k then
    k = job(number)
    jobs[number] = k
  end
  out[i + 1] = outcome_of(k, ARGV[base + 1], ARGV[base + 2], ARGV[base + 3], ARGV[base + 4])
end
return out

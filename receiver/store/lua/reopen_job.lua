-- An operator's retry of the job given, once failed, expired or cancelled: its unfinished
-- work runs again through the usual paths (results fetches queued again, its poll or
-- reconciliation due now). No own ARGV. Returns reopened, not_ended or unknown_job.
local k = job(1)
local h = call('HMGET', k.hash, 'status', 'submitting', 'external')
if not h[1] then return CODE.unknown_job end
if h[1] ~= STATUS.failed and h[1] ~= STATUS.expired and h[1] ~= STATUS.cancelled then
  return CODE.not_ended
end
set_status(k, STATUS.running)
call('HDEL', k.hash, 'error', 'finished_at', 'final_event')
call('HSET', k.hash, 'updated_at', NOW, 'moved_at', NOW)
call('DEL', k.attempts)
local refetched = 0
-- By what the job holds, whatever its provider: a submission under way is resumed; a
-- provider job is polled (a polled job may keep its documents in its tasks too); tasks
-- waiting for callbacks are fetched and reconciled; else the job was never submitted.
if h[2] then
  enqueue(k, WORK.submit)
elseif h[3] then
  call('ZADD', S.due, NOW, WORK.poll .. ':' .. k.id)
elseif call('EXISTS', k.tasks) == 1 then
  local tasks = call('HGETALL', k.tasks)
  for i = 1, #tasks, 2 do
    local t, status = tasks[i], tasks[i + 1]
    if status == TASK.failed or status == TASK.expired or status == TASK.done then
      if status ~= TASK.done then
        call('HINCRBY', k.hash, 'failed', -1)
        if status == TASK.expired then call('HINCRBY', k.hash, 'expired', -1) end
        call('HSET', k.tasks, t, TASK.done)
        call('HDEL', k.errors, t)
      end
      enqueue(k, WORK.fetch, t)
      refetched = refetched + 1
    end
  end
  call('ZADD', S.due, NOW, WORK.reconcile .. ':' .. k.id)
else
  enqueue(k, WORK.submit)
end
emit(k, 'job.progress', {retried = true, refetching = refetched})
return CODE.reopened

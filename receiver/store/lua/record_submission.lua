-- A chunk of the job's submission accepted by its provider: records the task ids, then any
-- callbacks that came before them. Own ARGV: the chunk's index, '1' if it is the last, the
-- delay (s) before the job's callbacks are reconciled, then pairs (task id, input).
-- Returns recorded, duplicate (a chunk recorded before) or unknown_job.
local k = job(1)
local chunk, last, delay = tonumber(ARGV[FIRST]), ARGV[FIRST + 1] == '1', ARGV[FIRST + 2]
local h = call('HMGET', k.hash, 'status', 'chunks')
if not h[1] then return CODE.unknown_job end
if chunk < (tonumber(h[2]) or 0) then return CODE.duplicate end
for i = FIRST + 3, #ARGV, 2 do
  call('HSETNX', k.tasks, ARGV[i], TASK.pending)
  call('HSET', k.inputs, ARGV[i], ARGV[i + 1])
end
call('HINCRBY', k.hash, 'chunks', 1)
call('HDEL', k.hash, 'consecutive_failures', 'last_error')
if h[1] == STATUS.submitted then
  set_status(k, STATUS.running)
  call('HSET', k.hash, 'submitted_at', NOW)
end
if last then
  call('HDEL', k.hash, 'submitting')
  call('HSET', k.hash, 'total', call('HLEN', k.tasks))
  call('ZADD', S.due, tonumber(NOW) + tonumber(delay), WORK.reconcile .. ':' .. k.id)
  emit(k, 'job.progress', {submitted = call('HLEN', k.tasks)})
end
local pending = call('HGETALL', k.early)
for i = 1, #pending, 2 do
  if call('HEXISTS', k.tasks, pending[i]) == 1 then
    apply(k, pending[i], pending[i + 1], 'callback')
    call('HDEL', k.early, pending[i])
  end
end
if last then
  call('DEL', k.early)
  settle(k)
end
return CODE.recorded

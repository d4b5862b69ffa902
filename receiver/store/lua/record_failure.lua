-- A failed attempt at some work of the job given, to be retried. Own ARGV: the work
-- (WorkItem.attempt_name: submit, poll, fetch:<task>...), the error on one line. Counts
-- the attempt (its backoff) and the job's failures in a row (any success of the job's work
-- clears them), keeps the error on the job and tells subscribers. Returns the work's
-- attempts so far; 0 for a job that ended or is gone.
local k = job(1)
local work, err = ARGV[FIRST], ARGV[FIRST + 1]
local status = call('HGET', k.hash, 'status')
if (not status) or TERMINAL[status] then return 0 end
local attempt = call('HINCRBY', k.attempts, work, 1)
local failures = call('HINCRBY', k.hash, 'consecutive_failures', 1)
call('HSET', k.hash, 'last_error', err, 'last_error_at', NOW, 'updated_at', NOW)
emit(k, 'job.progress', {work = work, last_error = err, consecutive_failures = failures})
return attempt

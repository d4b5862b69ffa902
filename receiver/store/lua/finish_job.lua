-- Move the job given to a terminal status. Own ARGV: the status, the reason.
-- Returns finished, closed (it had ended) or unknown_job.
local k = job(1)
if not call('HGET', k.hash, 'status') then return CODE.unknown_job end
if finish(k, ARGV[FIRST], ARGV[FIRST + 1]) then return CODE.finished end
return CODE.closed

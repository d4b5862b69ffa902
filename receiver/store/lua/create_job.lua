-- Create the job given, with its job.created event. Own ARGV: the work to queue now ('' for
-- none), the work to schedule now ('' for none: a tracked job's first poll), then
-- field/value pairs of its hash. Returns created, or exists.
local k = job(1)
if call('EXISTS', k.hash) == 1 then return CODE.exists end
local fields = {}
for i = FIRST + 2, #ARGV do fields[#fields + 1] = ARGV[i] end
-- Counters start absent (read as 0) and updated_at as created_at: a tracked job's hash
-- holds only what it must.
call('HSET', k.hash, 'status', STATUS.submitted, 'created_at', NOW, unpack(fields))
call('HINCRBY', S.stats, 'status:' .. call('HGET', k.hash, 'status'), 1)
call('XADD', S.jobs, '*', 'j', k.id)
emit(k, 'job.created', {})
if ARGV[FIRST] ~= '' then enqueue(k, ARGV[FIRST]) end
if ARGV[FIRST + 1] ~= '' then call('ZADD', S.due, NOW, ARGV[FIRST + 1] .. ':' .. k.id) end
return CODE.created

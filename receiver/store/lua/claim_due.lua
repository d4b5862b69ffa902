-- KEYS[1] a schedule; ARGV: now, how many, the lease end (unix time).
-- Takes the due members and pushes their due time past the lease, so no other worker
-- takes them meanwhile and a crashed worker's members come due again after the lease.
local items = call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, member in ipairs(items) do call('ZADD', KEYS[1], ARGV[3], member) end
return items

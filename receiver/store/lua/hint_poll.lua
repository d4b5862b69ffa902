-- KEYS[1] the schedule of the job's poll, KEYS[2] the job's hash; ARGV: the poll's member,
-- now. A webhook's hint that a polled job is ready. A poll merely scheduled (its due time
-- is the `next_poll_at` its last poll recorded) comes due now. A poll a worker holds (its
-- due time is a lease end) keeps its lease, so no second worker polls the job at once;
-- `poll_now` tells the holder to poll again as soon as it is done. Returns due, flagged,
-- already_due or not_scheduled (the job ended or is gone).
local score = call('ZSCORE', KEYS[1], ARGV[1])
if not score or call('EXISTS', KEYS[2]) == 0 then return CODE.not_scheduled end
if tonumber(score) <= tonumber(ARGV[2]) then return CODE.already_due end
local planned = call('HGET', KEYS[2], 'next_poll_at')
if planned and tonumber(planned) == tonumber(score) then
  call('ZADD', KEYS[1], ARGV[2], ARGV[1])
  return CODE.due
end
call('HSET', KEYS[2], 'poll_now', '1')
return CODE.flagged

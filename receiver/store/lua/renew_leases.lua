-- KEYS: the schedule of each member. ARGV: the new lease end, then pairs (member, the
-- lease end the caller set), one per key. Extends each lease only if the member's due time
-- is still that lease end: a member rescheduled meanwhile keeps its new due time. Returns
-- 1 or 0 per member.
local out = {}
for i = 1, #KEYS do
  local member, held = ARGV[2 * i], ARGV[2 * i + 1]
  local score = call('ZSCORE', KEYS[i], member)
  if score and tonumber(score) == tonumber(held) then
    call('ZADD', KEYS[i], ARGV[1], member)
    out[i] = 1
  else
    out[i] = 0
  end
end
return out

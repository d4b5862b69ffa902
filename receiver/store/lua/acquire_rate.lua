-- KEYS[1] the rate's key; ARGV: seconds between calls (1 / rate), burst (calls), how many
-- calls the caller takes at once.
-- A generic cell rate algorithm on the server's clock, shared by every process: returns
-- '0' when the caller may go now (and counts it), else the seconds to wait.
local t = call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local interval, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local tat = math.max(tonumber(call('GET', KEYS[1]) or '0'), now)
local next_tat = tat + interval * tonumber(ARGV[3] or '1')
local wait = next_tat - now - interval * burst
if wait > 0 then return tostring(wait) end
call('SET', KEYS[1], tostring(next_tat), 'PX', math.ceil((next_tat - now) * 1000) + 1000)
return '0'

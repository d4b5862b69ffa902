"""The Lua scripts that make every state change one atomic Redis step.

Each script starts from PRELUDE. Its ARGV begins with the four common arguments
(key prefix, unix time now, the ISO time stamped on events, the events stream MAXLEN);
the script's own arguments follow from ARGV[5].
"""

from __future__ import annotations

PRELUDE = r"""
local P = ARGV[1]
local NOW = ARGV[2]
local AT = ARGV[3]
-- AT in unix milliseconds, rounded as Store._common rounds it.
local AT_MS = string.format('%.0f', math.floor(tonumber(NOW) * 1000 + 0.5))
local MAXLEN = ARGV[4]
local TERMINAL = {completed = true, failed = true, cancelled = true, expired = true}

local function jkey(j) return P .. 'job:{' .. j .. '}' end

-- Change a job's status, keeping the count of jobs by status in P .. 'stats'.
local function set_status(j, status)
  local old = redis.call('HGET', jkey(j), 'status')
  if old == status then return end
  redis.call('HSET', jkey(j), 'status', status)
  if old then redis.call('HINCRBY', P .. 'stats', 'status:' .. old, -1) end
  redis.call('HINCRBY', P .. 'stats', 'status:' .. status, 1)
end

-- Append an event to the stream and publish it with its stream id; returns that id.
-- The stream entry holds the event's fields flat, always the same ones in the same order,
-- so that Redis keeps their names once per block of entries rather than in each entry.
local function emit(j, etype, detail)
  local h = redis.call('HMGET', jkey(j), 'provider', 'status', 'completed', 'failed', 'total')
  local c, f, t = tonumber(h[3]) or 0, tonumber(h[4]) or 0, tonumber(h[5]) or 0
  local dbody = cjson.encode(detail or {})
  local id = redis.call('XADD', P .. 'stream:events', 'MAXLEN', '~', MAXLEN, '*',
                        'type', etype, 'job_id', j, 'provider', h[1] or '', 'status', h[2] or '',
                        'completed', c, 'failed', f, 'total', t, 'at', AT_MS, 'detail', dbody)
  local event = {
    id = id, type = etype, job_id = j, provider = h[1], status = h[2], at = AT,
    progress = {completed = c, failed = f, total = t}, detail = detail or {},
  }
  local message = cjson.encode(event)
  redis.call('PUBLISH', P .. 'events', message)
  redis.call('PUBLISH', P .. 'events:' .. j, message)
  return id
end

-- Move a job to a terminal status once, with its event; later calls change nothing.
-- What the job held only while it ran goes with it: callbacks held aside for task ids a
-- submission never recorded (a job cancelled or refused while submitting) would stay for
-- ever. The job's record (hash, tasks, inputs, errors, attempts) stays as long as the job;
-- its results expire on their own TTL.
local function finish(j, status, reason)
  local current = redis.call('HGET', jkey(j), 'status')
  if (not current) or TERMINAL[current] then return false end
  redis.call('DEL', jkey(j) .. ':early')
  set_status(j, status)
  redis.call('HSET', jkey(j), 'finished_at', NOW, 'updated_at', NOW)
  if reason and reason ~= '' then redis.call('HSET', jkey(j), 'error', reason) end
  local detail = {}
  if reason and reason ~= '' then detail = {reason = reason} end
  -- Kept so that a subscriber arriving later finds the final event without a search.
  redis.call('HSET', jkey(j), 'final_event', emit(j, 'job.' .. status, detail))
  return true
end

-- When every task is terminal the job ends: completed if any task has results. Returns the
-- status it ended the job in, if it did.
local function settle(j)
  local h = redis.call('HMGET', jkey(j), 'status', 'completed', 'failed', 'total', 'expired',
                       'submitting')
  if (not h[1]) or TERMINAL[h[1]] or h[6] then return end
  local c, f = tonumber(h[2]) or 0, tonumber(h[3]) or 0
  local t, x = tonumber(h[4]) or 0, tonumber(h[5]) or 0
  if c + f < t then return end
  if c > 0 or t == 0 then
    finish(j, 'completed', nil)
    return 'completed'
  elseif x == t then
    finish(j, 'expired', 'the results of every task expired at the provider')
    return 'expired'
  end
  finish(j, 'failed', 'every task failed')
  return 'failed'
end

-- A code, and the status the job ended in when this change ended it ('stored:completed').
local function ending(code, ended)
  if ended then return code .. ':' .. ended end
  return code
end

-- A provider says task t of job j is done or faulted. Returns what happened (see ending).
local function apply(j, t, status, source)
  local tasks = jkey(j) .. ':tasks'
  local current = redis.call('HGET', tasks, t)
  if not current then return 'unknown_task' end
  if current ~= 'pending' then return 'duplicate' end
  local ended
  if status == 'done' then
    redis.call('HSET', tasks, t, 'done')
    redis.call('HINCRBY', jkey(j), 'received', 1)
    redis.call('XADD', P .. 'stream:work', '*', 'k', 'fetch', 'j', j, 't', t)
    emit(j, 'job.progress', {task_id = t, task_status = 'done', source = source})
  else
    redis.call('HSET', tasks, t, 'failed')
    redis.call('HSET', jkey(j) .. ':errors', t, 'faulted: the provider gave up on the task')
    redis.call('HINCRBY', jkey(j), 'failed', 1)
    emit(j, 'task.failed', {task_id = t, reason = 'faulted', source = source})
    ended = settle(j)
  end
  redis.call('HSET', jkey(j), 'updated_at', NOW)
  return ending('accepted', ended)
end
"""

# ARGV[5]: where the news came from (callback | reconcile); ARGV[6]: number of callbacks n;
# then n triples (job id, task id, status: done | faulted).
# Returns one code per callback: accepted, duplicate, early, closed, unknown_job, unknown_task.
CALLBACKS = (
    PRELUDE
    + r"""
local out = {}
local source = ARGV[5]
local n = tonumber(ARGV[6])
for i = 0, n - 1 do
  local j, t, status = ARGV[7 + i * 3], ARGV[8 + i * 3], ARGV[9 + i * 3]
  local h = redis.call('HMGET', jkey(j), 'status', 'submitting', 'total')
  local code
  if not h[1] then
    code = 'unknown_job'
  elseif TERMINAL[h[1]] then
    code = 'closed'
  else
    code = apply(j, t, status, source)
    -- A callback can beat the submission's answer: keep it until the task ids are known.
    if code == 'unknown_task' and h[2] then
      local early = jkey(j) .. ':early'
      if redis.call('HLEN', early) < (tonumber(h[3]) or 0) then
        redis.call('HSETNX', early, t, status)
        code = 'early'
      end
    end
  end
  out[i + 1] = code
end
return out
"""
)

# ARGV[5] job id, ARGV[6] work kind to enqueue now ('' for none), then field/value pairs.
CREATE_JOB = (
    PRELUDE
    + r"""
local j = ARGV[5]
if redis.call('EXISTS', jkey(j)) == 1 then return 'exists' end
local fields = {}
for i = 7, #ARGV do fields[#fields + 1] = ARGV[i] end
-- Counters start absent (read as 0) and updated_at as created_at: a tracked job's hash
-- holds only what it must.
redis.call('HSET', jkey(j), 'status', 'submitted', 'created_at', NOW, unpack(fields))
redis.call('HINCRBY', P .. 'stats', 'status:' .. redis.call('HGET', jkey(j), 'status'), 1)
redis.call('XADD', P .. 'stream:jobs', '*', 'j', j)
emit(j, 'job.created', {})
if ARGV[6] ~= '' then
  redis.call('XADD', P .. 'stream:work', '*', 'k', ARGV[6], 'j', j)
end
return 'created'
"""
)

# ARGV[5] job id, ARGV[6] chunk index, ARGV[7] '1' if last chunk, ARGV[8] reconcile delay (s),
# ARGV[9] the due key of the job's reconcile member, then pairs (task id, input).
# Records the provider's task ids, then any early callbacks.
RECORD_SUBMISSION = (
    PRELUDE
    + r"""
local j = ARGV[5]
local h = redis.call('HMGET', jkey(j), 'status', 'chunks')
if not h[1] then return 'unknown_job' end
if tonumber(ARGV[6]) < (tonumber(h[2]) or 0) then return 'duplicate' end
local tasks, inputs = jkey(j) .. ':tasks', jkey(j) .. ':inputs'
for i = 10, #ARGV, 2 do
  redis.call('HSETNX', tasks, ARGV[i], 'pending')
  redis.call('HSET', inputs, ARGV[i], ARGV[i + 1])
end
redis.call('HINCRBY', jkey(j), 'chunks', 1)
redis.call('HDEL', jkey(j), 'consecutive_failures', 'last_error')
if h[1] == 'submitted' then
  set_status(j, 'running')
  redis.call('HSET', jkey(j), 'submitted_at', NOW)
end
local last = ARGV[7] == '1'
if last then
  redis.call('HDEL', jkey(j), 'submitting')
  redis.call('HSET', jkey(j), 'total', redis.call('HLEN', tasks))
  redis.call('ZADD', ARGV[9], tonumber(NOW) + tonumber(ARGV[8]), 'reconcile:' .. j)
  emit(j, 'job.progress', {submitted = redis.call('HLEN', tasks)})
end
local early = jkey(j) .. ':early'
local pending = redis.call('HGETALL', early)
for i = 1, #pending, 2 do
  if redis.call('HEXISTS', tasks, pending[i]) == 1 then
    apply(j, pending[i], pending[i + 1], 'callback')
    redis.call('HDEL', early, pending[i])
  end
end
if last then
  redis.call('DEL', early)
  settle(j)
end
return 'recorded'
"""
)

# ARGV[5] number of outcomes n; then n groups of five: job id, task id, outcome
# (stored | failed | expired), the compressed results (stored) or the reason, and the results
# TTL in seconds. Returns one code per outcome.
TASK_OUTCOMES = (
    PRELUDE
    + r"""
local function outcome_of(j, t, outcome, value, ttl)
  local status = redis.call('HGET', jkey(j), 'status')
  if not status then return 'unknown_job' end
  if TERMINAL[status] then return 'closed' end
  local tasks = jkey(j) .. ':tasks'
  local current = redis.call('HGET', tasks, t)
  if not current then return 'unknown_task' end
  if current == 'stored' or current == 'failed' or current == 'expired' then
    return 'duplicate'
  end
  if outcome == 'stored' then
    redis.call('HSET', jkey(j) .. ':results', t, value)
    redis.call('EXPIRE', jkey(j) .. ':results', tonumber(ttl))
    redis.call('HSET', tasks, t, 'stored')
    redis.call('HINCRBY', jkey(j), 'completed', 1)
    redis.call('HDEL', jkey(j), 'consecutive_failures', 'last_error')
    emit(j, 'task.completed', {task_id = t})
  else
    redis.call('HSET', tasks, t, outcome)
    redis.call('HSET', jkey(j) .. ':errors', t, value)
    redis.call('HINCRBY', jkey(j), 'failed', 1)
    if outcome == 'expired' then redis.call('HINCRBY', jkey(j), 'expired', 1) end
    emit(j, 'task.failed', {task_id = t, reason = value})
  end
  redis.call('HSET', jkey(j), 'updated_at', NOW)
  return ending(outcome, settle(j))
end

local out = {}
for i = 0, tonumber(ARGV[5]) - 1 do
  local base = 6 + i * 5
  out[i + 1] = outcome_of(ARGV[base], ARGV[base + 1], ARGV[base + 2], ARGV[base + 3],
                          ARGV[base + 4])
end
return out
"""
)

# ARGV[5] job id, ARGV[6] the work that failed (submit, poll, fetch:<task>...), ARGV[7] the
# error, on one line. Counts the attempt of that work (its backoff) and the job's failures
# in a row (any success of the job's work clears them), keeps the error on the job, and
# tells subscribers. Returns the work's attempts so far; 0 for a job that ended or is gone.
RECORD_FAILURE = (
    PRELUDE
    + r"""
local j = ARGV[5]
local status = redis.call('HGET', jkey(j), 'status')
if (not status) or TERMINAL[status] then return 0 end
local attempt = redis.call('HINCRBY', jkey(j) .. ':attempts', ARGV[6], 1)
local failures = redis.call('HINCRBY', jkey(j), 'consecutive_failures', 1)
redis.call('HSET', jkey(j), 'last_error', ARGV[7], 'last_error_at', NOW, 'updated_at', NOW)
emit(j, 'job.progress', {work = ARGV[6], last_error = ARGV[7], consecutive_failures = failures})
return attempt
"""
)

# ARGV[5] job id, ARGV[6] terminal status, ARGV[7] reason.
FINISH_JOB = (
    PRELUDE
    + r"""
if not redis.call('HGET', jkey(ARGV[5]), 'status') then return 'unknown_job' end
if finish(ARGV[5], ARGV[6], ARGV[7]) then return 'finished' end
return 'closed'
"""
)

# ARGV[5] number of updates n; then n updates, each: job id, event type, JSON detail,
# number of fields k, then k field/value pairs to set. Returns one code per update.
UPDATE_JOBS = (
    PRELUDE
    + r"""
local function update(j, etype, detail, first, last)
  local status = redis.call('HGET', jkey(j), 'status')
  if not status then return 'unknown_job' end
  if TERMINAL[status] then return 'closed' end
  local fields, polled_at = {}, nil
  for i = first, last, 2 do
    if ARGV[i] == 'status' then
      set_status(j, ARGV[i + 1])
    else
      if ARGV[i] == 'polled_at' then polled_at = ARGV[i + 1] end
      fields[#fields + 1] = ARGV[i]
      fields[#fields + 1] = ARGV[i + 1]
    end
  end
  redis.call('HSET', jkey(j), 'updated_at', NOW, unpack(fields))
  if etype ~= '' then emit(j, etype, cjson.decode(detail)) end
  -- A poll's record: the poll worked, so its retries start over; and a webhook that asked
  -- for a poll while this one ran (HINT_POLL's `poll_now`) makes the next one due at once.
  if polled_at then
    redis.call('HDEL', jkey(j) .. ':attempts', 'poll')
    redis.call('HDEL', jkey(j), 'consecutive_failures', 'last_error')
    if redis.call('HDEL', jkey(j), 'poll_now') == 1 then
      redis.call('HSET', jkey(j), 'next_poll_at', polled_at)
      return 'poll_now'
    end
  end
  return 'updated'
end

local out = {}
local i = 6
for n = 1, tonumber(ARGV[5]) do
  local k = tonumber(ARGV[i + 3])
  out[n] = update(ARGV[i], ARGV[i + 1], ARGV[i + 2], i + 4, i + 3 + 2 * k)
  i = i + 4 + 2 * k
end
return out
"""
)

# ARGV[5] job id, ARGV[6] the due key of its poll, ARGV[7] the due key of its reconcile.
# An operator's retry of a failed, expired or cancelled job: its unfinished work runs again
# through the usual paths (results fetches re-queued, polls and reconciliation due now).
REOPEN_JOB = (
    PRELUDE
    + r"""
local j = ARGV[5]
local h = redis.call('HMGET', jkey(j), 'status', 'submitting', 'external')
if not h[1] then return 'unknown_job' end
if h[1] ~= 'failed' and h[1] ~= 'expired' and h[1] ~= 'cancelled' then return 'not_ended' end
set_status(j, 'running')
redis.call('HDEL', jkey(j), 'error', 'finished_at', 'final_event')
redis.call('HSET', jkey(j), 'updated_at', NOW, 'moved_at', NOW)
redis.call('DEL', jkey(j) .. ':attempts')
local refetched = 0
-- By what the job holds, whatever its provider: a submission under way is resumed; a
-- provider job is polled (a polled job may keep its documents in :tasks too); tasks waiting
-- for callbacks are fetched and reconciled; else the job was never submitted.
if h[2] then
  redis.call('XADD', P .. 'stream:work', '*', 'k', 'submit', 'j', j)
elseif h[3] then
  redis.call('ZADD', ARGV[6], NOW, 'poll:' .. j)
elseif redis.call('EXISTS', jkey(j) .. ':tasks') == 1 then
  local tasks = redis.call('HGETALL', jkey(j) .. ':tasks')
  for i = 1, #tasks, 2 do
    local t, status = tasks[i], tasks[i + 1]
    if status == 'failed' or status == 'expired' or status == 'done' then
      if status ~= 'done' then
        redis.call('HINCRBY', jkey(j), 'failed', -1)
        if status == 'expired' then redis.call('HINCRBY', jkey(j), 'expired', -1) end
        redis.call('HSET', jkey(j) .. ':tasks', t, 'done')
        redis.call('HDEL', jkey(j) .. ':errors', t)
      end
      redis.call('XADD', P .. 'stream:work', '*', 'k', 'fetch', 'j', j, 't', t)
      refetched = refetched + 1
    end
  end
  redis.call('ZADD', ARGV[7], NOW, 'reconcile:' .. j)
else
  redis.call('XADD', P .. 'stream:work', '*', 'k', 'submit', 'j', j)
end
emit(j, 'job.progress', {retried = true, refetching = refetched})
return 'reopened'
"""
)

# KEYS[1] due set; ARGV[1] now, ARGV[2] how many, ARGV[3] the lease end (unix time).
# Takes the due members and pushes their due time past the lease, so no other worker
# takes them meanwhile and a crashed worker's members come due again after the lease.
CLAIM_DUE = r"""
local items = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0,
                         tonumber(ARGV[2]))
for _, member in ipairs(items) do redis.call('ZADD', KEYS[1], ARGV[3], member) end
return items
"""

# ARGV[1] the new lease end; then triples (due key, member, the lease end the caller set).
# Extends each lease only if the member's due time is still that lease end: a member
# rescheduled meanwhile keeps its new due time. Returns 1 or 0 per member.
RENEW_LEASES = r"""
local out = {}
for i = 2, #ARGV, 3 do
  local score = redis.call('ZSCORE', ARGV[i], ARGV[i + 1])
  if score and tonumber(score) == tonumber(ARGV[i + 2]) then
    redis.call('ZADD', ARGV[i], ARGV[1], ARGV[i + 1])
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
return out
"""

# KEYS[1] the rate key; ARGV[1] seconds between calls (1 / rate), ARGV[2] burst (calls),
# ARGV[3] how many calls the caller takes at once.
# A generic cell rate algorithm on the server's clock, shared by every worker: returns '0'
# when the caller may go now (and counts it), else the seconds to wait.
ACQUIRE_RATE = r"""
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local interval, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local tat = math.max(tonumber(redis.call('GET', KEYS[1]) or '0'), now)
local next_tat = tat + interval * tonumber(ARGV[3] or '1')
local wait = next_tat - now - interval * burst
if wait > 0 then return tostring(wait) end
redis.call('SET', KEYS[1], tostring(next_tat), 'PX', math.ceil((next_tat - now) * 1000) + 1000)
return '0'
"""

# KEYS[1] the due key of the poll, KEYS[2] the job hash; ARGV[1] the member, ARGV[2] now.
# A webhook's hint that a polled job is ready. A poll merely scheduled (its due time is the
# `next_poll_at` its last poll recorded) comes due now. A poll a worker holds (its due time
# is a lease end) keeps its lease, so no second worker polls the job at once; `poll_now`
# tells the holder to poll again as soon as it is done. Returns 'due', 'flagged',
# 'already_due' or 'not_scheduled' (the job ended or is gone).
HINT_POLL = r"""
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score or redis.call('EXISTS', KEYS[2]) == 0 then return 'not_scheduled' end
if tonumber(score) <= tonumber(ARGV[2]) then return 'already_due' end
local planned = redis.call('HGET', KEYS[2], 'next_poll_at')
if planned and tonumber(planned) == tonumber(score) then
  redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
  return 'due'
end
redis.call('HSET', KEYS[2], 'poll_now', '1')
return 'flagged'
"""

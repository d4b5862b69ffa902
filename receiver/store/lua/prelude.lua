-- Shared by every script that works on jobs (scripts.JOB_SCRIPTS); runs after the header.
-- KEYS: the shared keys (SHARED_KEY_NAMES), then JOB_KEYS keys per job (JOB_KEY_NAMES).
-- ARGV: unix time now, the ISO time stamped on events, the events stream MAXLEN, the
-- number of jobs m, their m ids in the order of their keys; then the script's own, from
-- ARGV[FIRST].
local NOW, AT, MAXLEN = ARGV[1], ARGV[2], ARGV[3]
-- NOW in unix milliseconds, rounded as Store._common rounds it for AT.
local AT_MS = string.format('%.0f', math.floor(tonumber(NOW) * 1000 + 0.5))
local FIRST = 5 + tonumber(ARGV[4])
local S = {}
for i, name in ipairs(SHARED_KEY_NAMES) do S[name] = KEYS[i] end
local TERMINAL = {
  [STATUS.completed] = true, [STATUS.failed] = true, [STATUS.cancelled] = true,
  [STATUS.expired] = true,
}

-- The n-th job given: its id and its keys by name.
local function job(n)
  local k, base = {id = ARGV[4 + n]}, #SHARED_KEY_NAMES + (n - 1) * #JOB_KEY_NAMES
  for i, name in ipairs(JOB_KEY_NAMES) do k[name] = KEYS[base + i] end
  return k
end

-- Change a job's status, keeping the count of jobs by status in S.stats.
local function set_status(k, status)
  local old = call('HGET', k.hash, 'status')
  if old == status then return end
  call('HSET', k.hash, 'status', status)
  if old then call('HINCRBY', S.stats, 'status:' .. old, -1) end
  call('HINCRBY', S.stats, 'status:' .. status, 1)
end

-- Append an event to the stream and publish it with its stream id; returns that id.
-- The stream entry holds the event's fields flat, always the same ones in the same order,
-- so that Redis keeps their names once per block of entries rather than in each entry.
local function emit(k, etype, detail)
  local h = call('HMGET', k.hash, 'provider', 'status', 'completed', 'failed', 'total')
  local c, f, t = tonumber(h[3]) or 0, tonumber(h[4]) or 0, tonumber(h[5]) or 0
  local dbody = cjson.encode(detail or {})
  local id = call('XADD', S.events, 'MAXLEN', '~', MAXLEN, '*',
                  'type', etype, 'job_id', k.id, 'provider', h[1] or '', 'status', h[2] or '',
                  'completed', c, 'failed', f, 'total', t, 'at', AT_MS, 'detail', dbody)
  local event = {
    id = id, type = etype, job_id = k.id, provider = h[1], status = h[2], at = AT,
    progress = {completed = c, failed = f, total = t}, detail = detail or {},
  }
  local message = cjson.encode(event)
  call('PUBLISH', CHANNEL, message)
  call('PUBLISH', JOB_CHANNEL .. k.id, message)
  return id
end

-- Queue work for the workers.
local function enqueue(k, kind, t)
  if t then return call('XADD', S.work, '*', 'k', kind, 'j', k.id, 't', t) end
  return call('XADD', S.work, '*', 'k', kind, 'j', k.id)
end

-- Move a job to a terminal status once, with its event; later calls change nothing.
-- What the job held only while it ran goes with it: callbacks held aside for task ids a
-- submission never recorded (a job cancelled or refused while submitting) would stay for
-- ever. The job's record (hash, tasks, inputs, errors, attempts) stays as long as the job;
-- its results expire on their own TTL.
local function finish(k, status, reason)
  local current = call('HGET', k.hash, 'status')
  if (not current) or TERMINAL[current] then return false end
  call('DEL', k.early)
  set_status(k, status)
  call('HSET', k.hash, 'finished_at', NOW, 'updated_at', NOW)
  if reason and reason ~= '' then call('HSET', k.hash, 'error', reason) end
  local detail = {}
  if reason and reason ~= '' then detail = {reason = reason} end
  -- Kept so that a subscriber arriving later finds the final event without a search.
  call('HSET', k.hash, 'final_event', emit(k, 'job.' .. status, detail))
  return true
end

-- When every task is terminal the job ends: completed if any task has results. Returns the
-- status it ended the job in, if it did.
local function settle(k)
  local h = call('HMGET', k.hash, 'status', 'completed', 'failed', 'total', 'expired',
                 'submitting')
  if (not h[1]) or TERMINAL[h[1]] or h[6] then return end
  local c, f = tonumber(h[2]) or 0, tonumber(h[3]) or 0
  local t, x = tonumber(h[4]) or 0, tonumber(h[5]) or 0
  if c + f < t then return end
  if c > 0 or t == 0 then
    finish(k, STATUS.completed, nil)
    return STATUS.completed
  elseif x == t then
    finish(k, STATUS.expired, 'the results of every task expired at the provider')
    return STATUS.expired
  end
  finish(k, STATUS.failed, 'every task failed')
  return STATUS.failed
end

-- A code, and the status the job ended in when this change ended it ('stored:completed').
local function ending(code, ended)
  if ended then return code .. ':' .. ended end
  return code
end

-- A provider says task t of job k is done or faulted. Returns what happened (see ending).
local function apply(k, t, status, source)
  local current = call('HGET', k.tasks, t)
  if not current then return CODE.unknown_task end
  if current ~= TASK.pending then return CODE.duplicate end
  local ended
  if status == 'done' then
    call('HSET', k.tasks, t, TASK.done)
    call('HINCRBY', k.hash, 'received', 1)
    enqueue(k, WORK.fetch, t)
    emit(k, 'job.progress', {task_id = t, task_status = TASK.done, source = source})
  else
    call('HSET', k.tasks, t, TASK.failed)
    call('HSET', k.errors, t, 'faulted: the provider gave up on the task')
    call('HINCRBY', k.hash, 'failed', 1)
    emit(k, 'task.failed', {task_id = t, reason = 'faulted', source = source})
    ended = settle(k)
  end
  call('HSET', k.hash, 'updated_at', NOW)
  return ending(CODE.accepted, ended)
end

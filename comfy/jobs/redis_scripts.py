"""The Lua of :mod:`comfy.jobs.redis_store`: one body per transition, each run atomically by Redis.

Why Lua rather than MULTI/WATCH: a body reads the record, decides and writes the record and every index
in one step on the server, so a transition is one round trip and never retried; WATCH would need a read,
then a MULTI that fails and is redone whenever another worker touched the same keys (every claim races on
the head of the queue).

The bodies and their shared helpers are one library of Redis Functions (:data:`LIBRARY`, Redis 7 or
newer), loaded once with ``FUNCTION LOAD``: the helpers are defined once, not again on every call as a
script's preamble would be. One function, :data:`BATCH_FUNCTION`, runs a batch of operations, each with
its own reply (:mod:`comfy.jobs.redis_batch` sends the calls of one event-loop turn together). The
library's name holds its code's hash, so replicas of two versions side by side each call their own.

Records are hashes whose values are JSON texts written by Python (floats keep every digit); Lua only
compares them, copies them, or reads a few plain ones (state, owner, attempts, seq). Every body checks
everything first and writes last, so an early return leaves nothing half done. ``ARGV[1]`` of each
operation is its key prefix; keys are built from it here, which suits one Redis (or a primary with
replicas), not Redis Cluster.

Replies are ``{status, ...}``: ``ok`` with the record as one JSON object, or ``notfound``,
``lease`` (the worker lost its lease), ``notqueued``, ``notfinal``, ``conflict``, ``changed``, ``none``.
"""

from __future__ import annotations

import hashlib

__all__ = ["LIBRARY", "LIBRARY_NAME", "BATCH_FUNCTION", "OPERATIONS", "KEYS"]

#: Every key and channel under the prefix, for the Python side and the Lua side alike (``K`` in Lua).
KEYS = {
    "job": ":job:",  # + id: a hash, field -> JSON text of Job.to_dict(), and _idem (its idempotency key)
    "pending": ":pending",  # a list of the queued ids in run order, the front first
    "state": ":state:",  # + state: a sorted set of ids by seq (listing, counts, filters)
    "owner": ":owner:",  # + state + ":" + owner: the same for one owner's jobs
    "unowned": ":unowned:",  # + state: the same for the jobs nobody owns (the open page's)
    "leases": ":leases",  # a sorted set of running ids by lease expiry (expired())
    "finished": ":finished",  # a sorted set of final ids by finished_at (retention)
    "idem": ":idem:",  # + sha256 of [owner, key]: a hash {job_id, fingerprint}
    "seq": ":seq",  # the last sequence number given
    "events": ":events",  # the pub/sub channel of job events (comfy.jobs.redis_events)
    "cancel": ":cancel",  # the pub/sub channel of cancel requests
    "presence": ":presence:",  # + replica or worker id: its heartbeat, a JSON record with a TTL (comfy.jobs.presence)
    "grid": ":grid:",  # + id: an X/Y/Z plot's record, JSON text (comfy.jobs.grid_records)
    "grids": ":grids",  # a set of every plot's id (retention)
}

# -- shared helpers, defined once in the library ----------------------------------------------------------

_PRELUDE = "local K = {" + ", ".join(f"{name} = '{suffix}'" for name, suffix in KEYS.items()) + "}" + r"""
-- The key prefix of the call being run (each call names its own): set by bind() before each body runs.
local P, PENDING, LEASES, FINISHED
local function bind(prefix)
  P = prefix
  PENDING, LEASES, FINISHED = P .. K.pending, P .. K.leases, P .. K.finished
end
local FINAL = {succeeded = true, failed = true, cancelled = true}
local ENDED = {lease_owner = 'null', lease_expires = 'null'}

local function job_key(id) return P .. K.job .. id end
local function state_key(state) return P .. K.state .. state end
local function owner_key(state, owner)
  if owner then return P .. K.owner .. state .. ':' .. owner end
  return P .. K.unowned .. state
end

local function decode(text)
  if not text then return nil end
  local value = cjson.decode(text)
  if value == cjson.null then return nil end
  return value
end

local function load(id)
  local flat = redis.call('HGETALL', job_key(id))
  if #flat == 0 then return nil end
  local rec = {}
  for i = 1, #flat, 2 do rec[flat[i]] = flat[i + 1] end
  return rec
end

-- The record as one JSON object: its values are JSON texts already, so this is a join, not an encoding.
-- Fields starting with _ are the store's own (not JSON) and stay here.
-- Pieces joined once by table.concat: no string made (and interned) per field.
local function json(rec)
  local parts, n = {'{'}, 1
  for k, v in pairs(rec) do
    if string.byte(k, 1) ~= 95 then
      parts[n + 1], parts[n + 2], parts[n + 3], parts[n + 4] = '"', k, '":', v
      parts[n + 5], n = ',', n + 5
    end
  end
  parts[n] = (n == 1) and '{}' or '}'
  return table.concat(parts)
end

local function ok(rec) return {'ok', json(rec)} end
local function state_of(rec) return string.sub(rec.state, 2, -2) end  -- a plain word in quotes
local function is_final(rec) return FINAL[state_of(rec)] == true end

-- '' means "no worker given": the caller is not a worker (a person cancelling, a note), so no lease check.
local function lease_ok(rec, worker)
  return worker == '' or (state_of(rec) == 'running' and rec.lease_owner == worker)
end

local function merge(...)
  local out = {}
  for _, t in ipairs({...}) do for k, v in pairs(t) do out[k] = v end end
  return out
end

-- Write changed fields and keep every index in step with the state: the one place indexes change.
local function save(id, rec, changes)
  local old_state = state_of(rec)
  local args = {}
  for k, v in pairs(changes) do rec[k] = v; args[#args + 1] = k; args[#args + 1] = v end
  if #args > 0 then redis.call('HSET', job_key(id), unpack(args)) end
  local new_state = state_of(rec)
  if new_state ~= old_state then
    local seq, owner = tonumber(rec.seq), decode(rec.owner)
    redis.call('ZREM', state_key(old_state), id)
    redis.call('ZADD', state_key(new_state), seq, id)
    redis.call('ZREM', owner_key(old_state, owner), id)
    redis.call('ZADD', owner_key(new_state, owner), seq, id)
    if old_state == 'queued' then redis.call('LREM', PENDING, 1, id) end
    if new_state == 'queued' then redis.call('LPUSH', PENDING, id) end  -- a retry keeps its place: the front
    if FINAL[new_state] then redis.call('ZADD', FINISHED, tonumber(rec.finished_at), id) end
  end
  if new_state == 'running' and (changes.lease_expires or old_state ~= 'running') then
    redis.call('ZADD', LEASES, tonumber(rec.lease_expires), id)
  elseif old_state == 'running' and new_state ~= 'running' then
    redis.call('ZREM', LEASES, id)
  end
end

local function claimed(rec, worker, expires, now)
  return {state = '"running"', attempts = string.format('%d', tonumber(rec.attempts) + 1), lease_owner = worker,
          lease_expires = expires, started_at = (rec.started_at == 'null') and now or rec.started_at}
end

local function requeued(reason)
  return merge(ENDED, {state = '"queued"', prompt_id = 'null', progress = '0.0', node = 'null', step = 'null',
                       steps = 'null', note = reason})
end

local function ended(state, now, extra)
  return merge(ENDED, {state = '"' .. state .. '"', finished_at = now}, extra or {})
end

-- The common frame of a transition on a live job: unknown -> notfound, final -> unchanged, lease checked.
local function transition(id, worker, decide)
  local rec = load(id)
  if not rec then return {'notfound'} end
  if is_final(rec) then return ok(rec) end
  if not lease_ok(rec, worker) then return {'lease'} end
  local changes = decide(rec)
  if changes then save(id, rec, changes) end
  return ok(rec)
end
"""

# -- enqueue: ARGV prefix, then per request: id, idem key ('' none), fingerprint, fields --------------------
# The fields travel as one argument, "name\0json\0name\0json": JSON text never holds a NUL (it is escaped),
# and one argument is much cheaper to send than fifty.

_ENQUEUE = r"""
local requests = {}
for at = 2, #ARGV, 4 do
  local r = {id = ARGV[at], idem = ARGV[at + 1], fingerprint = ARGV[at + 2], fields = {}}
  for part in string.gmatch(ARGV[at + 3], '([^%z]*)%z') do r.fields[#r.fields + 1] = part end
  requests[#requests + 1] = r
end
-- First every check (so a conflict rolls back the whole batch), then every write.
local batch = {}
for i, r in ipairs(requests) do
  if r.idem ~= '' then
    local seen = batch[r.idem]
    if not seen then
      local stored = redis.call('HMGET', P .. K.idem .. r.idem, 'job_id', 'fingerprint')
      if stored[1] and redis.call('EXISTS', job_key(stored[1])) == 1 then
        seen = {id = stored[1], fingerprint = stored[2]}
      end
    end
    if seen then
      if seen.fingerprint ~= r.fingerprint then return {'conflict', i, seen.id} end
      r.existing = seen.id
    else
      batch[r.idem] = {id = r.id, fingerprint = r.fingerprint}
    end
  end
  if not r.existing and redis.call('EXISTS', job_key(r.id)) == 1 then
    -- The same id and queued_at: this very call, sent again after its reply was lost. The job it made.
    local queued_at
    for f = 1, #r.fields - 1, 2 do if r.fields[f] == 'queued_at' then queued_at = r.fields[f + 1] end end
    if queued_at and redis.call('HGET', job_key(r.id), 'queued_at') == queued_at then
      r.existing = r.id
    else
      return {'changed', i}
    end
  end
end
local out = {'ok'}
for _, r in ipairs(requests) do
  if r.existing then
    out[#out + 1] = {'old', r.existing, json(load(r.existing) or {})}
  else
    local seq = redis.call('INCR', P .. K.seq)
    local key = job_key(r.id)
    redis.call('HSET', key, 'seq', string.format('%d', seq), unpack(r.fields))
    if r.idem ~= '' then
      redis.call('HSET', P .. K.idem .. r.idem, 'job_id', r.id, 'fingerprint', r.fingerprint)
      redis.call('HSET', key, '_idem', r.idem)
    end
    local owner = decode(redis.call('HGET', key, 'owner'))
    redis.call('ZADD', state_key('queued'), seq, r.id)
    redis.call('ZADD', owner_key('queued', owner), seq, r.id)
    redis.call('RPUSH', PENDING, r.id)
    out[#out + 1] = {'new', r.id, seq}
  end
end
return out
"""

# -- claims: ARGV prefix, worker, lease_expires, now (claim_id: then the id) --------------------------------

_CLAIM = r"""
while true do
  local id = redis.call('LINDEX', PENDING, 0)
  if not id then return {'none'} end
  local rec = load(id)
  if rec and state_of(rec) == 'queued' then
    save(id, rec, claimed(rec, ARGV[2], ARGV[3], ARGV[4]))
    return ok(rec)
  end
  redis.call('LPOP', PENDING)  -- a stale entry; never expected
end
"""

_CLAIM_ID = r"""
local rec = load(ARGV[5])
if not rec or state_of(rec) ~= 'queued' then return {'none'} end
save(ARGV[5], rec, claimed(rec, ARGV[2], ARGV[3], ARGV[4]))
return ok(rec)
"""

# -- the lease: renew (ARGV prefix, id, worker, expires), take_over (... expected owner, expected expiry, force)

_RENEW = r"""
local rec = load(ARGV[2])
if not rec or state_of(rec) ~= 'running' or rec.lease_owner ~= ARGV[3] then return {'none'} end
save(ARGV[2], rec, {lease_expires = ARGV[4]})
return {'ok'}
"""

_TAKE_OVER = r"""
local rec = load(ARGV[2])
if not rec or state_of(rec) ~= 'running' then return {'none'} end
if ARGV[7] ~= '1' and (rec.lease_owner ~= ARGV[5] or rec.lease_expires ~= ARGV[6]) then return {'changed'} end
save(ARGV[2], rec, {lease_owner = ARGV[3], lease_expires = ARGV[4], note = ARGV[8]})
return ok(rec)
"""

# -- transitions on a live job: ARGV prefix, id, worker ('' none), now, then their own ----------------------

_UPDATE = r"""  -- ARGV[5..]: field, value pairs
return transition(ARGV[2], ARGV[3], function(rec)
  local changes = {}
  for i = 5, #ARGV, 2 do changes[ARGV[i]] = ARGV[i + 1] end
  return changes
end)
"""

_FINISH = r"""  -- ARGV[5]: outputs
return transition(ARGV[2], ARGV[3], function(rec)
  return ended('succeeded', ARGV[4], {progress = '1.0', outputs = ARGV[5]})
end)
"""

_FAIL = r"""  -- ARGV[5]: error, ARGV[6]: message as a note, ARGV[7]: retry '1'/'0', ARGV[8]: max attempts
return transition(ARGV[2], ARGV[3], function(rec)
  if ARGV[7] == '1' and tonumber(rec.attempts) < tonumber(ARGV[8]) and rec.cancel_requested ~= 'true' then
    return requeued(ARGV[6])
  end
  return ended('failed', ARGV[4], {error = ARGV[5]})
end)
"""

_REQUEUE = r"""  -- ARGV[5]: reason as a note, ARGV[6]: the worker_lost error, ARGV[7]: max attempts
return transition(ARGV[2], ARGV[3], function(rec)
  if rec.cancel_requested == 'true' then return ended('cancelled', ARGV[4]) end
  if tonumber(rec.attempts) >= tonumber(ARGV[7]) then return ended('failed', ARGV[4], {error = ARGV[6]}) end
  return requeued(ARGV[5])
end)
"""

_RELEASE = r"""  -- ARGV[5]: reason as a note, ARGV[6]: keep the run's handle '1'/'0'
return transition(ARGV[2], ARGV[3], function(rec)
  if rec.cancel_requested == 'true' then return ended('cancelled', ARGV[4]) end
  local attempts = math.max(tonumber(rec.attempts) - 1, 0)
  local kept = (ARGV[6] == '1') and {prompt_id = rec.prompt_id} or {}
  return merge(requeued(ARGV[5]), {attempts = string.format('%d', attempts)}, kept)
end)
"""

_CANCEL = r"""
return transition(ARGV[2], '', function(rec)
  if state_of(rec) == 'queued' then return ended('cancelled', ARGV[4], {cancel_requested = 'true'}) end
  if rec.cancel_requested == 'true' then return nil end
  return {cancel_requested = 'true'}
end)
"""

_MARK_CANCELLED = r"""
return transition(ARGV[2], ARGV[3], function(rec)
  return ended('cancelled', ARGV[4], {cancel_requested = 'true'})
end)
"""

# -- annotate a final job (ARGV prefix, id, then field/value pairs), move (prefix, id, index) --------------

_ANNOTATE = r"""
local rec = load(ARGV[2])
if not rec then return {'notfound'} end
if not is_final(rec) then return {'notfinal', state_of(rec)} end
local changes = {}
for i = 3, #ARGV, 2 do changes[ARGV[i]] = ARGV[i + 1] end
save(ARGV[2], rec, changes)
return ok(rec)
"""

_MOVE = r"""
local id, index = ARGV[2], tonumber(ARGV[3])
local rec = load(id)
if not rec then return {'notfound'} end
if state_of(rec) ~= 'queued' then return {'notqueued'} end
redis.call('LREM', PENDING, 1, id)
local pivot = redis.call('LINDEX', PENDING, index)
if pivot then redis.call('LINSERT', PENDING, 'BEFORE', pivot, id) else redis.call('RPUSH', PENDING, id) end
return {'ok'}
"""

# -- reading: list (ARGV prefix, highest score, limit, index keys...), prune (prefix, older_than, batch) ----

_LIST = r"""
local highest, limit = ARGV[2], tonumber(ARGV[3])
local total, found = 0, {}
for i = 4, #ARGV do
  total = total + redis.call('ZCARD', ARGV[i])
  if limit > 0 then
    local hits = redis.call('ZREVRANGEBYSCORE', ARGV[i], highest, '-inf', 'WITHSCORES', 'LIMIT', 0, limit + 1)
    for j = 1, #hits, 2 do found[#found + 1] = {tonumber(hits[j + 1]), hits[j]} end
  end
end
table.sort(found, function(a, b) return a[1] > b[1] end)
local out = {'ok', total, #found > limit and string.format('%d', found[limit][1]) or ''}
for j = 1, math.min(limit, #found) do out[#out + 1] = json(load(found[j][2]) or {}) end
return out
"""

_FORGET = r"""
-- Delete a final job that finished before older_than, with its indexes and idempotency key; true if it went.
local function forget_if_old(id, older_than)
  local rec = load(id)
  if not (rec and is_final(rec) and rec.finished_at ~= 'null' and tonumber(rec.finished_at) < tonumber(older_than)) then
    return false
  end
  local state, owner = state_of(rec), decode(rec.owner)
  redis.call('DEL', job_key(id))
  redis.call('ZREM', state_key(state), id)
  redis.call('ZREM', owner_key(state, owner), id)
  redis.call('ZREM', FINISHED, id)
  if rec._idem then
    local idem = P .. K.idem .. rec._idem
    if redis.call('HGET', idem, 'job_id') == id then redis.call('DEL', idem) end
  end
  return true
end
"""

_PRUNE = _FORGET + r"""
local older_than, batch = ARGV[2], tonumber(ARGV[3])
local ids = redis.call('ZRANGEBYSCORE', FINISHED, '-inf', '(' .. older_than, 'LIMIT', 0, batch)
local deleted = 0
for _, id in ipairs(ids) do
  redis.call('ZREM', FINISHED, id)  -- also drops a stale entry, so the next batch moves on
  if forget_if_old(id, older_than) then deleted = deleted + 1 end
end
return {'ok', deleted, #ids}
"""

# -- retention that keeps some jobs (prefix, older_than, ids...): the ids deleted --------------------------
_PRUNE_IDS = _FORGET + r"""
local out = {'ok'}
for i = 3, #ARGV do
  if forget_if_old(ARGV[i], ARGV[2]) then out[#out + 1] = ARGV[i] end
end
return out
"""

_BODIES = {
    "enqueue": _ENQUEUE, "claim": _CLAIM, "claim_id": _CLAIM_ID, "renew": _RENEW, "take_over": _TAKE_OVER,
    "update": _UPDATE, "finish": _FINISH, "fail": _FAIL, "requeue": _REQUEUE, "release": _RELEASE,
    "cancel": _CANCEL, "mark_cancelled": _MARK_CANCELLED, "annotate": _ANNOTATE, "move": _MOVE,
    "list": _LIST, "prune": _PRUNE, "prune_ids": _PRUNE_IDS,
}

# -- the library: every body a Lua function of its ARGV, and one Redis Function that runs a batch of calls --
# FCALL <batch> 0  name argc arg1..argc  name argc ...   ->   one reply per call, in order: the body's reply,
# or an error reply for that call alone. Each call is atomic (the whole batch is: Redis runs one function at
# a time); one call's error leaves the others' replies standing.

_DISPATCH = r"""
local function run(name, argv)
  local body = BODIES[name]
  if not body then return {err = 'ERR no queue operation ' .. tostring(name)} end
  bind(argv[1])
  local done, reply = pcall(body, argv)
  if done then return reply end
  if type(reply) == 'table' and reply.err then return reply end
  return {err = 'ERR ' .. tostring(reply)}
end

redis.register_function(BATCH, function(_keys, args)
  local out, at = {}, 1
  while at <= #args do
    local name, argc = args[at], tonumber(args[at + 1])
    local argv = {}
    for i = 1, argc do argv[i] = args[at + 1 + i] end
    out[#out + 1] = run(name, argv)
    at = at + 2 + argc
  end
  return out
end)
"""


def _library() -> tuple[str, str, str]:
    bodies = "".join(f"BODIES.{name} = function(ARGV)\n{body}\nend\n" for name, body in _BODIES.items())
    code = _PRELUDE + "local BODIES = {}\n" + bodies
    version = hashlib.sha1((code + _DISPATCH).encode()).hexdigest()[:12]
    name = f"studio_jobs_{version}"  # its code's hash: replicas of two versions each find their own
    batch = f"{name}_batch"
    return name, batch, f"#!lua name={name}\nlocal BATCH = '{batch}'\n" + code + _DISPATCH


#: The Redis Functions library (FUNCTION LOAD), its name, and the function a batch of calls goes to (FCALL).
LIBRARY_NAME, BATCH_FUNCTION, LIBRARY = _library()
OPERATIONS = frozenset(_BODIES)

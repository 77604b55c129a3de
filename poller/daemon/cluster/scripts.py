"""The Lua scripts that keep the cluster's invariants, each one atomic in Redis.

Every script takes the key prefix as ``ARGV[1]`` and builds its key names from it
(:mod:`.keys`): the cluster runs on one Redis primary. Time inside a script is the
Redis server's (``TIME``), one clock for every replica; a replica's own clock only
measures how long ago it renewed its lease (see :mod:`.lease`).

``REGISTER``
    A lease for a replica ID, with a new fencing token (``INCR <p>fence``), unless a
    live lease holds the ID (then: how long it still has). A retry of the same call
    (same nonce) gets the same token, and the lease's TTL afresh: the caller counts
    the lease from when it sent the retry.
``HEARTBEAT``
    Renews the lease if the token is still the replica's, drops expired replicas from
    ``<p>replicas``, and returns the live ones. 0: the lease is gone.
``LEAVE``
    Deletes the lease (a graceful stop), so the others rebalance at once.
``CLAIM``
    Takes units (partitions ``slot:<n>``, sinks ``sink:<name>``) that are free (released,
    or never held) or whose holder's lease is gone (expired, or a newer registration:
    its token changed). For each unit: -1 (held by a live replica), 0 (the caller holds
    it already: holders send theirs at every step, to learn whether Redis still says
    so), or the milliseconds to wait before using it: a released unit is used ``gap``
    after its release, so the last request of its old holder and the first of the new
    one are that far apart; a unit Redis has no record of (never held, or lost with
    Redis's last writes) is used ``gap`` after the claim, so that a replica that still
    believes it holds it learns otherwise at its next step and stops first.
``RELEASE``
    Gives units back (their ``owner`` emptied, ``at`` stamped), if still the caller's.
``ADOPT``, ``READ``
    A sink's holder takes the entries pending in its group (``XAUTOCLAIM``, a page at a
    time; after the last, the group's other consumers are deleted), and reads its
    group (``XREADGROUP``, with the failed attempts of each entry), only while its
    lease holds its token and the sink is its own with that token: ``{0}``
    otherwise, and nothing is read nor taken from the group.
``ADD``, ``REMOVE``
    The control API's changes of the job set, published on ``<p>intake`` for owners.
``COMMIT``
    A batch of events of one replica. Refused as a whole (``fenced``) unless the
    replica's lease holds its token; an event is refused (``notmine``) unless its
    partition is held by this replica *and token*. Each event must carry the job's
    stored ``seq`` + 1 and generation (``gen``, bumped when a removed or failed job is
    added again), and a transition the stored ``last_status`` as its previous status:
    then, atomically, the job's status, ``seq`` and payload are written, the event is
    appended to ``<p>events`` (``XADD``), its entry ID is kept in the job as
    ``e:<seq>``, and a final event takes the job out of its partition's set. So an
    event is in the stream exactly once, and ``seq`` never repeats nor skips, whoever
    polls the job. Per event: the stream entry ID, ``dup`` (this very event, its body
    byte for byte, is committed already under its ``seq``: a retry after a lost reply),
    ``stale`` (the replica's view of the job is behind, or another event holds that
    ``seq``: it reloads the job), ``unknown`` or ``notmine``.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "ADD",
    "ADOPT",
    "CLAIM",
    "COMMIT",
    "COMMIT_FIELDS",
    "HEARTBEAT",
    "LEAVE",
    "READ",
    "REGISTER",
    "RELEASE",
    "REMOVE",
]

_NOW: Final = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local p = ARGV[1]
"""

REGISTER: Final = (
    _NOW
    + """
local id, ttl, nonce, version = ARGV[2], tonumber(ARGV[3]), ARGV[4], ARGV[5]
local key = p .. 'replica:' .. id
local held = redis.call('HMGET', key, 'token', 'nonce')
local now = now_ms()
if held[1] then
  if held[2] ~= nonce then return {0, redis.call('PTTL', key)} end
  -- A retry (its reply was lost): the lease runs from now, as the caller counts it.
  redis.call('PEXPIRE', key, ttl)
  redis.call('ZADD', p .. 'replicas', now + ttl, id)
  return {1, tonumber(held[1])}
end
local token = redis.call('INCR', p .. 'fence')
redis.call('HSET', key, 'token', token, 'nonce', nonce, 'since', now, 'version', version)
redis.call('PEXPIRE', key, ttl)
redis.call('ZADD', p .. 'replicas', now + ttl, id)
redis.call('PUBLISH', p .. 'members', 'join ' .. id)
return {1, token}
"""
)

HEARTBEAT: Final = (
    _NOW
    + """
local id, token, ttl = ARGV[2], ARGV[3], tonumber(ARGV[4])
local key = p .. 'replica:' .. id
if redis.call('HGET', key, 'token') ~= token then return {0} end
redis.call('PEXPIRE', key, ttl)
local now = now_ms()
redis.call('ZADD', p .. 'replicas', now + ttl, id)
local gone = redis.call('ZRANGEBYSCORE', p .. 'replicas', '-inf', now)
if #gone > 0 then
  redis.call('ZREMRANGEBYSCORE', p .. 'replicas', '-inf', now)
  for _, other in ipairs(gone) do redis.call('PUBLISH', p .. 'members', 'leave ' .. other) end
end
return {1, now, redis.call('ZRANGEBYSCORE', p .. 'replicas', '(' .. now, '+inf')}
"""
)

LEAVE: Final = (
    _NOW
    + """
local id, token = ARGV[2], ARGV[3]
local key = p .. 'replica:' .. id
if redis.call('HGET', key, 'token') ~= token then return 0 end
redis.call('DEL', key)
redis.call('ZREM', p .. 'replicas', id)
redis.call('PUBLISH', p .. 'members', 'leave ' .. id)
return 1
"""
)

CLAIM: Final = (
    _NOW
    + """
local id, token, gap = ARGV[2], ARGV[3], tonumber(ARGV[4])
if redis.call('HGET', p .. 'replica:' .. id, 'token') ~= token then return {-2} end
local now = now_ms()
local out = {}
for i = 5, #ARGV do
  local key = p .. ARGV[i]
  local h = redis.call('HMGET', key, 'owner', 'token', 'at')
  local wait = -1
  if h[1] == id and h[2] == token then
    wait = 0
  elseif not h[1] then
    wait = gap
  elseif h[1] == '' then
    wait = math.max(0, (tonumber(h[3]) or 0) + gap - now)
  elseif redis.call('HGET', p .. 'replica:' .. h[1], 'token') ~= h[2] then
    wait = 0
  end
  if wait >= 0 and not (h[1] == id and h[2] == token) then
    redis.call('HSET', key, 'owner', id, 'token', token, 'at', now)
  end
  out[#out + 1] = wait
end
return out
"""
)

RELEASE: Final = (
    _NOW
    + """
local id, token = ARGV[2], ARGV[3]
local now = now_ms()
local n = 0
for i = 4, #ARGV do
  local key = p .. ARGV[i]
  local h = redis.call('HMGET', key, 'owner', 'token')
  if h[1] == id and h[2] == token then
    redis.call('HSET', key, 'owner', '', 'token', '', 'at', now)
    n = n + 1
  end
end
if n > 0 then redis.call('PUBLISH', p .. 'members', 'release ' .. id) end
return n
"""
)

_HOLDS_SINK: Final = """
local id, token, group = ARGV[2], ARGV[3], ARGV[4]
if redis.call('HGET', p .. 'replica:' .. id, 'token') ~= token then return {0} end
local holder = redis.call('HMGET', p .. 'sink:' .. group, 'owner', 'token')
if holder[1] ~= id or holder[2] ~= token then return {0} end
"""

ADOPT: Final = (
    _NOW
    + _HOLDS_SINK
    + """
local reply = redis.call('XAUTOCLAIM', p .. 'events', group, id, 0, ARGV[5], 'COUNT', ARGV[6],
  'JUSTID')
if reply[1] == '0-0' then
  -- Every pending entry is the holder's now: forget the consumers left with none.
  for _, consumer in ipairs(redis.call('XINFO', 'CONSUMERS', p .. 'events', group)) do
    local info = {}
    for j = 1, #consumer, 2 do info[consumer[j]] = consumer[j + 1] end
    if info['name'] ~= id and tonumber(info['pending']) == 0 then
      redis.call('XGROUP', 'DELCONSUMER', p .. 'events', group, info['name'])
    end
  end
end
return {1, reply[1], #reply[2]}
"""
)

READ: Final = (
    _NOW
    + _HOLDS_SINK
    + """
local reply = redis.call('XREADGROUP', 'GROUP', group, id, 'COUNT', ARGV[6], 'STREAMS',
  p .. 'events', ARGV[5])
local entries, ids, attempts = {}, {}, {}
if reply then entries = reply[1][2] end
for i, entry in ipairs(entries) do ids[i] = entry[1] end
if #ids > 0 then
  attempts = redis.call('HMGET', p .. 'sink:' .. group .. ':attempts', unpack(ids))
end
return {1, entries, attempts}
"""
)

ADD: Final = (
    _NOW
    + """
local credential, metadata = ARGV[2], ARGV[3]
local terminal = {completed = true, failed = true, cancelled = true, expired = true}
local now = now_ms() / 1000
local out, track = {}, {}
for i = 4, #ARGV, 2 do
  local job, slot = ARGV[i], ARGV[i + 1]
  local key = p .. 'job:' .. job
  local h = redis.call('HMGET', key, 'status', 'removed', 'last_status', 'gen')
  local status = nil
  if not h[1] then
    status = 'pending'
    redis.call('HSET', key, 'status', status, 'seq', 0, 'gen', 1, 'removed', 0, 'slot', slot,
      'added_at', now, 'updated_at', now)
    if metadata ~= '' then redis.call('HSET', key, 'metadata', metadata) end
    out[#out + 1] = 'new'
  elseif h[2] == '1' or h[1] == 'error' then
    -- Revived: a removed job, or one whose tracking failed. Its seq carries on.
    status = h[3] or 'pending'
    if h[2] ~= '1' then redis.call('ZREM', p .. 'status:' .. h[1], job) end
    redis.call('HSET', key, 'removed', 0, 'status', status, 'gen', tonumber(h[4]) + 1,
      'updated_at', now)
    redis.call('HDEL', key, 'error')
    if metadata ~= '' then redis.call('HSET', key, 'metadata', metadata) end
    out[#out + 1] = terminal[status] and 'back' or 'revived'
  else
    out[#out + 1] = 'known'
  end
  if status then
    if credential ~= '' then
      redis.call('HSET', key, 'credential', credential)
    else
      redis.call('HDEL', key, 'credential')
    end
    redis.call('ZADD', p .. 'jobs', 0, job)
    redis.call('ZADD', p .. 'status:' .. status, 0, job)
    redis.call('SADD', p .. 'statuses', status)
    if not terminal[status] then
      redis.call('ZADD', p .. 'slot:' .. slot .. ':jobs', 0, job)
      track[#track + 1] = job
    end
  end
end
if #track > 0 then redis.call('PUBLISH', p .. 'intake', '+' .. table.concat(track, '\\n+')) end
return out
"""
)

REMOVE: Final = (
    _NOW
    + """
local job = ARGV[2]
local key = p .. 'job:' .. job
local h = redis.call('HMGET', key, 'status', 'removed', 'slot')
if not h[1] or h[2] == '1' then return 0 end
redis.call('HSET', key, 'removed', 1, 'updated_at', now_ms() / 1000)
redis.call('ZREM', p .. 'jobs', job)
redis.call('ZREM', p .. 'status:' .. h[1], job)
redis.call('ZREM', p .. 'slot:' .. h[3] .. ':jobs', job)
redis.call('PUBLISH', p .. 'intake', '-' .. job)
return 1
"""
)

COMMIT_FIELDS: Final = 12
"""Arguments per event of ``COMMIT``: job, slot, gen, seq, previous, type, status, org,
payload, error, body, final."""

COMMIT: Final = (
    _NOW
    + """
local id, token = ARGV[2], ARGV[3]
if redis.call('HGET', p .. 'replica:' .. id, 'token') ~= token then return {'fenced'} end
local now = now_ms() / 1000
local mine, out = {}, {}
for i = 4, #ARGV, 12 do
  local job, slot = ARGV[i], ARGV[i + 1]
  local gen, seq, previous = tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3]), ARGV[i + 4]
  local kind, status, org = ARGV[i + 5], ARGV[i + 6], ARGV[i + 7]
  local ok = mine[slot]
  if ok == nil then
    local h = redis.call('HMGET', p .. 'slot:' .. slot, 'owner', 'token')
    ok = h[1] == id and h[2] == token
    mine[slot] = ok
  end
  local result
  if not ok then
    result = 'notmine'
  else
    local key = p .. 'job:' .. job
    local h = redis.call('HMGET', key, 'seq', 'gen', 'last_status', 'status', 'removed')
    local stored = tonumber(h[1])
    if not stored then
      result = 'unknown'
    elseif tonumber(h[2]) ~= gen then
      result = 'stale'
    elseif stored >= seq then
      -- The same event again (a retry), or another one under a seq already used.
      result = 'stale'
      local entry = redis.call('HGET', key, 'e:' .. seq)
      local found = entry and redis.call('XRANGE', p .. 'events', entry, entry) or {}
      if #found > 0 then
        local fields = found[1][2]
        for j = 1, #fields, 2 do
          if fields[j] == 'body' and fields[j + 1] == ARGV[i + 10] then result = 'dup' end
        end
      end
    elseif stored ~= seq - 1 or (kind == 'transition' and (h[3] or '') ~= previous) then
      result = 'stale'
    else
      result = redis.call('XADD', p .. 'events', '*', 'id', job .. ':' .. seq, 'job', job,
        'type', kind, 'body', ARGV[i + 10])
      if kind == 'transition' then
        redis.call('HSET', key, 'status', status, 'last_status', status, 'seq', seq,
          'payload', ARGV[i + 8], 'updated_at', now, 'e:' .. seq, result)
        redis.call('HDEL', key, 'error')
      else
        redis.call('HSET', key, 'status', status, 'seq', seq, 'error', ARGV[i + 9],
          'updated_at', now, 'e:' .. seq, result)
      end
      if org ~= '' then redis.call('HSET', key, 'org', org) end
      if h[5] ~= '1' and h[4] ~= status then
        redis.call('ZREM', p .. 'status:' .. h[4], job)
        redis.call('ZADD', p .. 'status:' .. status, 0, job)
        redis.call('SADD', p .. 'statuses', status)
      end
      if ARGV[i + 11] == '1' then redis.call('ZREM', p .. 'slot:' .. slot .. ':jobs', job) end
    end
  end
  out[#out + 1] = result
end
return out
"""
)

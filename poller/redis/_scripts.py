"""The Lua scripts that hold a fleet's shared state in Redis, each one atomic.

LEASE, THROTTLE and HEARTBEAT take their time as their first argument: a Unix time in
seconds, or an empty string for the server's ``TIME``. Engines pass an empty string,
so that a fleet spread over machines whose clocks disagree still shares one clock;
tests pass a time and are deterministic. The learning scripts need no clock: they
number changes. Scripts are sent by SHA (``EVALSHA``) and loaded once more when a
server answers ``NOSCRIPT`` (a restart, ``SCRIPT FLUSH``), see
:class:`poller.redis._client.ScriptClient`.

Key layout (``NS`` is the namespace; keys of one organisation share the hash tag
``{NS:ORG}``, so a script touching them could run on one Redis Cluster slot)::

    NS:{NS:ORG}:budget   string, JSON (layout v, see SCHEMA): the organisation's
                         adaptive state (the rate, pause, last cut, accepted answers)
                         and, for each engine, its last demand report and the paces
                         of the slots it holds, until when (see LEASE)
    NS:engines           sorted set: engine ID -> last heartbeat (live engines)
    NS:epoch             string: a random ID made when the namespace is first used;
                         a new one means Redis lost the namespace (restart, flush)
    NS:learn             sorted set: learned kind -> its last change number (changes
                         to the tables are numbered 1, 2, ...: a reader asks for the
                         kinds changed after the last number it read)
    NS:learn:SHA1        string, JSON {"v": 1, "t": total, "c": {bin: weight}}: one
                         kind's merged duration histogram, sparse (v: its layout)
    NS:learn-seq:ENGINE  string: the number of the engine's last push applied (a push
                         sent again after its answer was lost is not counted twice)
    NS:events            pub/sub channel: 429s, to every engine at once

Every key is written with a TTL (refreshed while in use): a fleet that stops leaves
nothing behind. Nothing here holds an API key: organisations are named by their ID,
engines by a random ID.
"""

from __future__ import annotations

import hashlib
from typing import Any, Final

__all__ = ["HEARTBEAT", "LEARN_PUSH", "LEARN_READ", "LEASE", "THROTTLE", "Script"]

# Shared by LEASE and THROTTLE: the adaptive state, as AdaptiveBudget keeps it locally.
_COMMON: Final = r"""
local function clock(arg)
  if arg ~= nil and arg ~= '' then return tonumber(arg) end
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1e6
end

-- The layout of the budget's JSON (v): one written by another layout is started
-- afresh (the configuration comes with every call; what was learned is lost once).
local SCHEMA = 3

local function fresh()
  return {v = SCHEMA, paused = 0, growth = 0, grown_at = 0, cut_at = 0,
          hungry_until = 0, ab = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0}, ae = 0, eng = {}}
end

-- Times are stored absolute, on the server's clock: one that went back (a failover to
-- a server whose clock is behind) must not leave the fleet paused, reserved or
-- climbing for that long. So on load nothing lies ahead of now but a pause (up to
-- max_pause) and the reservations (up to ahead), and nothing else after now.
local function load(key, now, ahead, max_pause)
  local raw = redis.call('GET', key)
  if not raw then return fresh() end
  local s = cjson.decode(raw)
  if s.v ~= SCHEMA then return fresh() end
  s.paused = math.min(s.paused, now + max_pause)
  s.hungry_until = math.min(s.hungry_until, now + math.max(1.0, 1.5 * ahead))
  s.grown_at, s.cut_at = math.min(s.grown_at, now), math.min(s.cut_at, now)
  if s.ae > math.floor(now * 10) then
    s.ae, s.ab = math.floor(now * 10), {0, 0, 0, 0, 0, 0, 0, 0, 0, 0}
  end
  for _, x in pairs(s.eng) do
    x.at = math.min(x.at, now)
    if x.s2 ~= nil then x.s2 = math.min(x.s2, now + ahead) end
    for _, seg in ipairs(x.r or {}) do seg[2] = math.min(seg[2], now + ahead) end
  end
  return s
end

-- Accepted answers in the last second, in ten 100 ms bins (ae: the newest bin's epoch).
local function advance(s, now)
  local epoch = math.floor(now * 10)
  if epoch > s.ae then
    local gap = math.min(epoch - s.ae, 10)
    for i = 1, gap do s.ab[((s.ae + i) % 10) + 1] = 0 end
    s.ae = epoch
  end
  return epoch
end

local function add_accepted(s, now, n)
  local epoch = advance(s, now)
  if n > 0 and epoch == s.ae then s.ab[(epoch % 10) + 1] = s.ab[(epoch % 10) + 1] + n end
end

local function accepted(s, now)
  advance(s, now)
  local total = 0
  for i = 1, 10 do total = total + s.ab[i] end
  return total
end

-- The CUBIC curve of AdaptiveBudget._target: nil while uncapped.
local function target(s, P)
  local ceil = s.ceil
  if s.wmax == nil then return ceil end
  local w, k, g = s.wmax, P.recovery, s.growth
  local rate = w + w * (1 - P.beta) * ((g - k) / k) ^ 3
  local linear = P.beta * w + P.min_growth * g
  local slow_start = P.min_rate * 2 ^ math.min(g / P.doubling, 60)
  rate = math.max(P.min_rate, rate, linear, slow_start)
  if ceil ~= nil then rate = math.min(rate, ceil) end
  return rate
end

-- Climb only while some engine wants more than the rate lets it have (hungry_until:
-- a second, or a lease period and a half if longer, after an engine that ran dry got
-- less than it asked for: not merely less than it asked, which a lease sized ahead of
-- need often is).
local function regrow(s, now)
  if s.wmax ~= nil and now > s.grown_at then
    if now < s.hungry_until then s.growth = s.growth + (now - s.grown_at) end
    s.grown_at = now
  end
end

-- Within a second of a cut, engines' reports of what was accepted before it are still
-- arriving (they report every lease period): the cut was measured against too little.
-- Lift w_max to what the window holds now, never above the rate before the cut.
local function lift(s, now)
  if s.wmax ~= nil and now - s.cut_at < 1.0 then
    local seen = accepted(s, now)
    if s.pre ~= nil then seen = math.min(seen, s.pre) end
    if seen > s.wmax then s.wmax = seen end
  end
end

local function params(a, i)
  return {beta = tonumber(a[i]), recovery = tonumber(a[i + 1]), min_rate = tonumber(a[i + 2]),
          min_growth = tonumber(a[i + 3]), doubling = tonumber(a[i + 4])}
end

local function configure(s, ceil_arg)
  -- The configuration travels with every call: an empty Redis is re-seeded by the first.
  if ceil_arg == '' then s.ceil = nil else s.ceil = tonumber(ceil_arg) end
end

local function save(key, s, ttl)
  redis.call('SET', key, cjson.encode(s), 'EX', ttl)
end
"""

_LEASE_LUA: Final = (
    _COMMON
    + r"""
-- KEYS[1] budget. ARGV: now, engine, weight, demand (-1: ran dry, wants more), want,
-- give_back, accepted, ceiling ('' none), horizon_s (the lease covers this much of the
-- demand: its period and a margin), ttl_s, stale_s (the engine's demand counts until
-- it is this old: it is overdue), max_ahead_s (no lease reaches further), max_pause_s
-- (no pause is longer), then beta, recovery_s, min_rate, min_growth, doubling_s.
local now = clock(ARGV[1])
local me, weight, demand = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local want, give_back, acc = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local horizon, ttl, stale = tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[11])
local P = params(ARGV, 14)
local s = load(KEYS[1], now, tonumber(ARGV[12]), tonumber(ARGV[13]))
configure(s, ARGV[8])
add_accepted(s, now, acc)
lift(s, now)
regrow(s, now)
local rate = target(s, P)

local e = s.eng[me] or {r = {}}
e.d, e.w, e.at, e.st = demand, weight, now, stale
-- An idle engine (no demand, nothing asked) leaves the shares until it wants again.
if demand == 0 and want == 0 then s.eng[me] = nil else s.eng[me] = e end

-- Max-min fair shares of the rate (water-filling) over engines with a fresh report:
-- those wanting less than an equal (weighted) share get what they want, the rest
-- share what is left by weight; what nobody wants is spread by weight over all.
local list, wsum = {}, 0
for id, x in pairs(s.eng) do
  if now - x.at > (x.st or stale) then s.eng[id] = nil
  else
    local d = x.d
    if d < 0 then d = math.huge end
    list[#list + 1] = {id = id, d = d, w = x.w}
    wsum = wsum + x.w
  end
end
local share = 0
if rate ~= nil then
  table.sort(list, function(a, b)
    if a.d / a.w == b.d / b.w then return a.id < b.id end
    return a.d / a.w < b.d / b.w
  end)
  local left, wleft, alloc, all_w = rate, wsum, {}, wsum
  for i, x in ipairs(list) do
    local fair = left * x.w / wleft
    if x.d <= fair then
      alloc[x.id] = x.d
      left, wleft = left - x.d, wleft - x.w
    else
      for j = i, #list do alloc[list[j].id] = left * list[j].w / wleft end
      left = 0
      break
    end
  end
  if alloc[me] ~= nil then share = alloc[me] + left * weight / all_w end
end

local MAX_SEGMENTS = 8
local grant, start, step, pause = 0, now, 0, 0
if now < s.paused then pause = s.paused - now end
if rate ~= nil then
  -- Each engine's slots come at its own pace, and every engine's reservation is kept
  -- as its paces until the times they end (e.r: segments {pace, until} in order, the
  -- same pace in one, at most MAX_SEGMENTS, or the two that end first merge at the
  -- larger pace; e.s2: where the last grant began). A new block goes where the paces
  -- of the others' reservations leave room for it: at every instant the paces
  -- reserved add up to the rate at most, so the server sees the rate (each engine at
  -- most one more slot in any second), however the engines are spread and however
  -- their demands differ.
  local r = {}
  for _, seg in ipairs(e.r or {}) do if seg[2] > now then r[#r + 1] = seg end end
  if give_back > 0 and #r > 0 then
    -- Its latest slots, all dated after now: its own reservation ends sooner.
    local last = r[#r]
    last[2] = math.max(now, e.s2 or now, last[2] - give_back / last[1])
    if last[2] <= now then r[#r] = nil end
  end
  e.r = r
  if pause == 0 and want > 0 and share > 0 then
    -- The paces the others reserved between t1 and t2 (each at its largest there).
    local function busy(t1, t2)
      local b = 0
      for id, x in pairs(s.eng) do
        if id ~= me then
          local most, from = 0, -math.huge
          for _, seg in ipairs(x.r or {}) do
            if seg[2] > t1 and from < t2 and seg[1] > most then most = seg[1] end
            from = seg[2]
          end
          b = b + most
        end
      end
      return b
    end
    start = now
    if #r > 0 then start = math.max(now, r[#r][2]) end
    -- The pace it needs: its share, so that its slots come early, a store to spend as
    -- its jobs come (bursts and all: a slot dated later than a job is a wait); but
    -- while the rate binds (tight) and it wants no more than it asks for, what it asks
    -- for, spread over the rest of the horizon after the slots it holds: faster, its
    -- slots would come before its jobs, go unspent, and take the room of an engine
    -- that wants more.
    local need = share
    if demand >= 0 and now < s.hungry_until then
      need = math.min(share, want / math.max(0.01, now + horizon - start))
    end
    -- The block runs from its start to the horizon: it needs room over all of it.
    -- Take the first start (its own reservation's end, or one of the others') with
    -- room for that pace, or for a good part of it.
    local ends = {}
    for id, x in pairs(s.eng) do
      if id ~= me then
        for _, seg in ipairs(x.r or {}) do
          if seg[2] > start then ends[#ends + 1] = seg[2] end
        end
      end
    end
    table.sort(ends)
    local enough = math.min(need, math.max(P.min_rate, 0.25 * need))
    local pace = math.min(need, rate - busy(start, now + horizon))
    local i = 1
    while pace < enough and i <= #ends do
      start = ends[i]
      pace = math.min(need, rate - busy(start, now + horizon))
      i = i + 1
    end
    if pace > 0 then
      grant = math.max(0, math.min(want, math.floor((now + horizon - start) * pace + 1e-9)))
    end
    if grant > 0 then
      step = 1 / pace
      local last = r[#r]
      if last ~= nil and math.abs(last[1] - pace) <= 0.01 * pace then
        last[1], last[2] = math.max(last[1], pace), start + grant * step  -- one pace
      else
        r[#r + 1] = {pace, start + grant * step}
        if #r > MAX_SEGMENTS then  -- the two that end first, at the larger pace
          r[2][1] = math.max(r[1][1], r[2][1])
          table.remove(r, 1)
        end
      end
      e.r, e.s2 = r, start
    end
  end
  if demand < 0 and grant < want and pause == 0 then
    s.hungry_until = math.max(s.hungry_until, now + math.max(1.0, 1.5 * horizon))
  end
end
save(KEYS[1], s, ttl)
local rate_out = '-1'
if rate ~= nil then rate_out = tostring(rate) end
-- Tight: some engine wants more than it gets (see regrow), so the rate binds and slots
-- must be spent on time; otherwise they may be spent later.
local tight = '0'
if rate ~= nil and now < s.hungry_until then tight = '1' end
return {tostring(grant), tostring(start - now), tostring(step), rate_out, tostring(share),
        tostring(pause), tostring(#list), tight}
"""
)

_THROTTLE_LUA: Final = (
    _COMMON
    + r"""
-- KEYS[1] budget. ARGV: now, pause_s, accepted, ceiling, ttl_s, channel, org_id,
-- max_ahead_s, max_pause_s, then beta, recovery_s, min_rate, min_growth, doubling_s.
-- A 429 seen by one engine: pause the organisation for every engine, and cut its rate to
-- a little under what the fleet had accepted over the last second, at most once a
-- second (answers to requests sent before a cut come after it).
local now = clock(ARGV[1])
local pause_s, acc, ttl = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[5])
local max_pause = tonumber(ARGV[9])
pause_s = math.min(pause_s, max_pause)
local P = params(ARGV, 10)
local s = load(KEYS[1], now, tonumber(ARGV[8]), max_pause)
configure(s, ARGV[4])
add_accepted(s, now, acc)
regrow(s, now)
local before = target(s, P)
local seen = accepted(s, now)
s.paused = math.max(s.paused, now + pause_s)
-- Every engine drops its slots on a pause: their reservations end with it.
for _, x in pairs(s.eng) do x.r = {} end
local cut = 0
if seen >= 2 or before ~= nil then
  if s.wmax == nil or now - s.cut_at >= 1.0 then
    if before ~= nil then seen = math.min(seen, before) end
    s.pre = before
    s.wmax = math.max(P.min_rate, seen)
    s.cut_at, s.grown_at, s.growth = now, now, 0
    cut = 1
  else
    lift(s, now)
  end
end
local rate = target(s, P)
save(KEYS[1], s, ttl)
local rate_out = -1
if rate ~= nil then rate_out = rate end
redis.call('PUBLISH', ARGV[6],
           cjson.encode({org = ARGV[7], pause = s.paused - now, rate = rate_out}))
return {tostring(s.paused - now), tostring(rate_out), tostring(cut)}
"""
)

_HEARTBEAT_LUA: Final = r"""
-- KEYS[1] engines, KEYS[2] epoch. ARGV: now, engine ('' none: count only), stale_s, ttl_s,
-- new_epoch, leaving ('1': deregister), epoch_ttl_s. Returns the live engines and the
-- namespace's epoch (made now if it had none).
local now
if ARGV[1] ~= '' then now = tonumber(ARGV[1]) else
  local t = redis.call('TIME'); now = tonumber(t[1]) + tonumber(t[2]) / 1e6 end
local ttl = tonumber(ARGV[4])
if ARGV[6] == '1' then redis.call('ZREM', KEYS[1], ARGV[2])
elseif ARGV[2] ~= '' then redis.call('ZADD', KEYS[1], now, ARGV[2]) end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[3]))
redis.call('EXPIRE', KEYS[1], ttl)
redis.call('SET', KEYS[2], ARGV[5], 'NX', 'EX', ARGV[7])
local epoch = redis.call('GET', KEYS[2])
redis.call('EXPIRE', KEYS[2], ARGV[7])
return {redis.call('ZCARD', KEYS[1]), epoch}
"""

_LEARN_PUSH_LUA: Final = r"""
-- KEYS[1] learn index, KEYS[2] epoch, KEYS[3] the engine's last push applied.
-- ARGV: expected epoch, new epoch, push number, max_weight, max_kinds, ttl_s, key
-- prefix, bins, deltas (JSON: [[kind, {bin: weight}], ...], a few dozen kinds at most).
-- Adds each kind's delta to its merged histogram (sparse: {"t": total, "c": {bin:
-- weight}}, halved whenever the total passes max_weight, as DurationSketch fades),
-- numbers each kind changed with the next change number (its score in the index), and
-- keeps at most max_kinds kinds (the least recently changed go). A push whose number
-- was applied already (its answer was lost, and it is sent again) changes nothing. A
-- namespace that lost its epoch (Redis restarted empty) takes no delta: the engine
-- pushes what it knows whole. Returns the epoch and '1' applied, '2' applied before,
-- '0' not applied (another epoch).
local TABLE = 1  -- the layout of a table's JSON: one in another is started afresh
local ttl, prefix = tonumber(ARGV[6]), ARGV[7]
redis.call('SET', KEYS[2], ARGV[2], 'NX', 'EX', ttl)
local epoch = redis.call('GET', KEYS[2])
redis.call('EXPIRE', KEYS[2], ttl)
if epoch ~= ARGV[1] then return {epoch, '0'} end
local number = tonumber(ARGV[3])
if number <= tonumber(redis.call('GET', KEYS[3]) or '0') then return {epoch, '2'} end
local max_weight, max_kinds, bins = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[8])
local top = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
local change = tonumber(top[2] or '0')
for _, item in ipairs(cjson.decode(ARGV[9])) do
  local kind, delta = item[1], item[2]
  local key = prefix .. redis.sha1hex(kind)
  local raw = redis.call('GET', key)
  local h = nil
  if raw then h = cjson.decode(raw) end
  if h == nil or h.v ~= TABLE then h = {v = TABLE, t = 0, c = {}} end
  for bin, weight in pairs(delta) do
    local i = tonumber(bin)
    if i ~= nil and i >= 0 and i < bins and i == math.floor(i) and weight > 0 then
      local k = tostring(i)
      h.c[k] = (h.c[k] or 0) + weight
      h.t = h.t + weight
    end
  end
  while h.t > max_weight do
    for k, weight in pairs(h.c) do h.c[k] = weight / 2 end
    h.t = h.t / 2
  end
  redis.call('SET', key, cjson.encode(h), 'EX', ttl)
  change = change + 1
  redis.call('ZADD', KEYS[1], change, kind)
end
local n = redis.call('ZCARD', KEYS[1])
if n > max_kinds then
  for _, kind in ipairs(redis.call('ZRANGE', KEYS[1], 0, n - max_kinds - 1)) do
    redis.call('DEL', prefix .. redis.sha1hex(kind))
  end
  redis.call('ZREMRANGEBYRANK', KEYS[1], 0, n - max_kinds - 1)
end
redis.call('EXPIRE', KEYS[1], ttl)
redis.call('SET', KEYS[3], number, 'EX', ttl)
return {epoch, '1'}
"""

_LEARN_READ_LUA: Final = r"""
-- KEYS[1] learn index, KEYS[2] epoch. ARGV: expected epoch, after (a change number),
-- page, key prefix. Returns the epoch, '1' (or '0': another epoch, nothing read), up
-- to `page` kinds changed after `after` in the order of their changes (JSON: [[kind,
-- {bin: weight}], ...]), the last change number read (the next call's `after`), and
-- '1' when there is no more. An index that started over (it expired) below `after`
-- is read from its start.
local TABLE = 1  -- the layout of a table's JSON (LEARN_PUSH): others are not read
local epoch = redis.call('GET', KEYS[2])
if epoch ~= ARGV[1] then return {epoch or '', '0', '[]', ARGV[2], '1'} end
local after, page, prefix = ARGV[2], tonumber(ARGV[3]), ARGV[4]
local top = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
if tonumber(top[2] or '0') < tonumber(after) then after = '0' end
local items = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. after, '+inf', 'WITHSCORES',
                         'LIMIT', 0, page)
local out, last = {}, after
for i = 1, #items, 2 do
  local raw = redis.call('GET', prefix .. redis.sha1hex(items[i]))
  if raw then
    local h = cjson.decode(raw)
    if h.v == TABLE then out[#out + 1] = {items[i], h.c} end
  end
  last = items[i + 1]
end
local body = '[]'
if #out > 0 then body = cjson.encode(out) end
local done = '0'
if #items < 2 * page then done = '1' end
return {epoch, '1', body, last, done}
"""


class Script:
    """A Lua script, sent by its SHA1 (the source once more after ``NOSCRIPT``)."""

    __slots__ = ("sha", "source")

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()

    def args(self, keys: list[str], argv: list[Any]) -> list[Any]:
        """The arguments of ``EVALSHA`` after the SHA: key count, keys, then ``argv``."""
        return [len(keys), *keys, *argv]


LEASE: Final = Script(_LEASE_LUA)
"""Reports an engine's demand and takes slots at its pace, where the others' leave room."""
THROTTLE: Final = Script(_THROTTLE_LUA)
"""A 429: pauses the organisation fleet-wide, cuts its rate, publishes the news."""
HEARTBEAT: Final = Script(_HEARTBEAT_LUA)
"""Registers (or deregisters) an engine; counts the live ones; returns the epoch."""
LEARN_PUSH: Final = Script(_LEARN_PUSH_LUA)
"""Merges a few dozen kinds of an engine's learned-duration deltas, once per push number."""
LEARN_READ: Final = Script(_LEARN_READ_LUA)
"""Returns a page of the learned tables changed after a change number."""

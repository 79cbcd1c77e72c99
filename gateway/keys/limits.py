"""Lua scripts run atomically by the state Redis: admission (one round trip per request), settlement
(after the response, batched), and the admin writes.

Redis layout (P = GATEWAY_STATE_KEY_PREFIX, default "gw"; S = "k:<token hash>" or "t:<team_id>"):

| key | type | what |
| --- | --- | --- |
| P:key:<sha256>   | HASH   | a key: token, alias, team, models, budget, bdur, breset, spend, total, reserved, rpm, tpm, par, blocked, expires, created, meta, v |
| P:team:<id>      | HASH   | a team: id, alias, models, budget, ... (as a key, without team/expires) |
| P:keys, P:teams  | SET    | all key hashes / team ids |
| P:team:<id>:keys | SET    | the team's key hashes |
| P:key_alias      | HASH   | key_alias -> key hash (aliases are unique) |
| P:team_name      | HASH   | team_id and team_alias -> team_id: one namespace, so no two teams share a label |
| P:ver            | STRING | version counter: every admin write stamps its record with a new `v` |
| P:rpm:S          | ZSET   | sliding 60 s request log: member = ticket id, score = ms |
| P:tpm:S          | HASH   | tokens per 1-second bucket (field = unix second), the last 60 s |
| P:par:S          | ZSET   | parallel slots: member = ticket id, score = lease expiry (ms); freed when the response ends |
| P:fly:S          | ZSET   | budget leases: member = ticket id, score = lease expiry (ms); freed when the cost is settled |
| P:res:S          | HASH   | budget reservation per request in flight (nano-USD) |
| P:ledger         | STREAM | one entry per request, trimmed by age (MINID ~) |

Channel P:inval: every admin write that changes or removes a key or team publishes its id
("k:<hash>" / "t:<team_id>", several separated by newlines), from inside the script, so every
worker drops its cached copy at once (gateway/keys/service.py).

Money is integer nano-USD. Lua numbers are doubles: exact below 2**53 (~$9M in nano-USD).
"""

from __future__ import annotations

from gateway.keys.resp import Script

_COMMON = r"""
local P = ARGV[1]
local function hgetall(key)
  local flat = redis.call('HGETALL', key)
  if #flat == 0 then return nil, flat end
  local t = {}
  for i = 1, #flat, 2 do t[flat[i]] = flat[i + 1] end
  return t, flat
end
local function num(x)
  if x == nil or x == false or x == '' then return nil end
  return tonumber(x)
end
local function fmt(x) return string.format('%d', x) end
local function publish(ids)
  if #ids > 0 then redis.call('PUBLISH', P .. ':inval', table.concat(ids, '\n')) end
end
-- the time: Redis's own clock (one clock for every replica), unless the caller passes one (tests)
local function clock(arg)
  local n = tonumber(arg)
  if n and n > 0 then return n end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
-- start a new budget window when the current one has ended (spend back to 0; in-flight reservations stay)
local function roll(rk, rec, now)
  local bdur = num(rec['bdur'])
  if not bdur or bdur <= 0 then return end
  local period = bdur * 1000
  local reset = num(rec['breset'])
  if reset == nil then
    reset = now + period
    redis.call('HSET', rk, 'breset', fmt(reset))
    rec['breset'] = fmt(reset)
  elseif reset <= now then
    reset = reset + (math.floor((now - reset) / period) + 1) * period
    redis.call('HSET', rk, 'spend', '0', 'breset', fmt(reset))
    rec['spend'] = '0'
    rec['breset'] = fmt(reset)
  end
end
"""

# ARGV: P, key hash, alias ('' = no models check), now ms (0 = Redis TIME), ticket id, reserve (nano-USD), prompt token
# estimate, cached key version, cached team version, lease ms, mode ('1' admit, '0' look up only)
# -> {status, detail, retry ms, key v, team v, key fields (if v changed), team fields (if v changed), flags, now}
# status: 0 unknown key, 1 ok, 2 expired, 3 model not allowed, 4 over a rate limit, 5 over a budget, 6 blocked
# flags (what settle must undo): 1 key in flight (slot and/or budget lease), 2 key tpm, 4 team in flight, 8 team tpm,
# 16 key parallel slot, 64 team parallel slot (what RELEASE frees)
ADMIT = Script(_COMMON + r"""
local h, alias, now, tid = ARGV[2], ARGV[3], clock(ARGV[4]), ARGV[5]
local reserve, est = tonumber(ARGV[6]), tonumber(ARGV[7])
local kv_cached, tv_cached, lease, admit = ARGV[8], ARGV[9], tonumber(ARGV[10]), ARGV[11] == '1'

local kk = P .. ':key:' .. h
local k, kflat = hgetall(kk)
if not k then return {0} end
local team_id = k['team'] or ''
local t, tflat, tk = nil, {}, nil
if team_id ~= '' then
  tk = P .. ':team:' .. team_id
  t, tflat = hgetall(tk)
end
local kv = k['v'] or ''
local tv = ''
if t then tv = t['v'] or '' end
local kret, tret = {}, {}
if kv ~= kv_cached then kret = kflat end
if t and tv ~= tv_cached then tret = tflat end
local function out(status, detail, retry, flags)
  return {status, detail or '', retry or 0, kv, tv, kret, tret, flags or 0, now}
end

local exp = num(k['expires'])
if exp and exp <= now then return out(2) end
if k['blocked'] == '1' then return out(6, 'key') end
if t and t['blocked'] == '1' then return out(6, 'team') end
if alias ~= '' then
  local needle = '\n' .. alias .. '\n'
  local m = k['models'] or ''
  if m ~= '' and not string.find(m, needle, 1, true) then return out(3, 'key') end
  if t then
    m = t['models'] or ''
    if m ~= '' and not string.find(m, needle, 1, true) then return out(3, 'team') end
  end
end
if not admit then return out(1) end

-- check every limit of both scopes before changing anything
local scopes = {{'k:' .. h, k, kk, 'key', 1}}
if t then scopes[2] = {'t:' .. team_id, t, tk, 'team', 4} end
for _, sc in ipairs(scopes) do
  local s, rec, rk, label = sc[1], sc[2], sc[3], sc[4]
  local rpm, tpm, par, budget = num(rec['rpm']), num(rec['tpm']), num(rec['par']), num(rec['budget'])
  if rpm then
    local zk = P .. ':rpm:' .. s
    redis.call('ZREMRANGEBYSCORE', zk, '-inf', now - 60000)
    local n = redis.call('ZCARD', zk)
    if n >= rpm then
      local retry = 1000
      local at = redis.call('ZRANGE', zk, n - rpm, n - rpm, 'WITHSCORES')
      if at[2] then retry = tonumber(at[2]) + 60000 - now end
      return out(4, label .. ':rpm:' .. fmt(rpm), retry)
    end
  end
  if tpm then
    local hk = P .. ':tpm:' .. s
    local flat = redis.call('HGETALL', hk)
    local cutoff = math.floor(now / 1000) - 59
    local sum, live = 0, {}
    for i = 1, #flat, 2 do
      local b = tonumber(flat[i])
      if b < cutoff then redis.call('HDEL', hk, flat[i])
      else
        local v = tonumber(flat[i + 1])
        sum = sum + v
        live[#live + 1] = {b, v}
      end
    end
    if sum >= tpm then
      table.sort(live, function(a, b) return a[1] < b[1] end)
      local retry, left = 1000, sum
      for _, bv in ipairs(live) do
        left = left - bv[2]
        if left < tpm then retry = (bv[1] + 60) * 1000 - now break end
      end
      return out(4, label .. ':tpm:' .. fmt(tpm), retry)
    end
  end
  if par then
    -- slots of requests that never ended (a crashed gateway) expire with their lease
    local pk = P .. ':par:' .. s
    redis.call('ZREMRANGEBYSCORE', pk, '-inf', now)
    if redis.call('ZCARD', pk) >= par then
      return out(4, label .. ':par:' .. fmt(par), 1000)
    end
  end
  if budget then
    -- leases of requests that never settled (a crashed gateway) expire and give their reservation back
    local fk, resk = P .. ':fly:' .. s, P .. ':res:' .. s
    local stale = redis.call('ZRANGEBYSCORE', fk, '-inf', now, 'LIMIT', 0, 1000)
    local freed = 0
    for _, id in ipairs(stale) do
      local a = redis.call('HGET', resk, id)
      if a then freed = freed + tonumber(a); redis.call('HDEL', resk, id) end
      redis.call('ZREM', fk, id)
    end
    if freed > 0 then
      redis.call('HINCRBY', rk, 'reserved', -freed)
      rec['reserved'] = fmt((num(rec['reserved']) or 0) - freed)
    end
    roll(rk, rec, now)
    local spend, reserved = num(rec['spend']) or 0, num(rec['reserved']) or 0
    if spend >= budget or spend + reserved + reserve > budget then
      local retry = 3600000
      local reset = num(rec['breset'])
      if num(rec['bdur']) and reset then retry = reset - now
      elseif reserved > 0 then retry = 1000 end
      return out(5, label .. ':budget:' .. fmt(budget) .. ':' .. fmt(spend) .. ':' .. fmt(reserved), retry)
    end
  end
end

-- admitted: count it
local flags = 0
for _, sc in ipairs(scopes) do
  local s, rec, rk, bit = sc[1], sc[2], sc[3], sc[5]
  local rpm, tpm, par, budget = num(rec['rpm']), num(rec['tpm']), num(rec['par']), num(rec['budget'])
  if rpm then
    local zk = P .. ':rpm:' .. s
    redis.call('ZADD', zk, now, tid)
    redis.call('PEXPIRE', zk, 61000)
  end
  if tpm then
    local hk = P .. ':tpm:' .. s
    if est > 0 then redis.call('HINCRBY', hk, fmt(math.floor(now / 1000)), est) end
    redis.call('PEXPIRE', hk, 61000)
    flags = flags + bit * 2
  end
  if par then
    local pk = P .. ':par:' .. s
    redis.call('ZADD', pk, now + lease, tid)
    redis.call('PEXPIRE', pk, lease + 60000)
  end
  if budget then
    local fk = P .. ':fly:' .. s
    redis.call('ZADD', fk, now + lease, tid)
    redis.call('PEXPIRE', fk, lease + 60000)
    if reserve > 0 then
      local resk = P .. ':res:' .. s
      redis.call('HSET', resk, tid, fmt(reserve))
      redis.call('PEXPIRE', resk, lease + 60000)
      redis.call('HINCRBY', rk, 'reserved', fmt(reserve))
    end
  end
  if par or budget then flags = flags + bit end
  if par then flags = flags + bit * 16 end
end
return out(1, '', 0, flags)
""")

# After the response: give back the reservation and the in-flight slot, add the real cost to spend
# (key and team), correct the token window from the estimate to the real count, append to the ledger.
# Tokens above the estimate are counted in the second of settlement (a stream longer than the 60 s
# window still counts its completion); an over-estimate is taken back from the admission second
# while that second is in the window (once it has left, the estimate has been counted already).
# ARGV: P, key hash ('' = master key), team id, ticket id, admitted ms, flags, cost (nano-USD),
# estimated prompt tokens, real tokens, now ms (0 = Redis TIME), ledger retention ms (0 = no ledger), ledger fields...
SETTLE = Script(_COMMON + r"""
local h, team_id, tid = ARGV[2], ARGV[3], ARGV[4]
local admitted, flags, cost = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local est, tokens, now, retention = tonumber(ARGV[8]), tonumber(ARGV[9]), clock(ARGV[10]), tonumber(ARGV[11])
local function scope(rk, s, fly, tpm)
  local exists = redis.call('EXISTS', rk) == 1
  if fly then
    local resk = P .. ':res:' .. s
    local a = redis.call('HGET', resk, tid)
    if a then
      redis.call('HDEL', resk, tid)
      if exists then redis.call('HINCRBY', rk, 'reserved', -tonumber(a)) end
    end
    redis.call('ZREM', P .. ':fly:' .. s, tid)
    redis.call('ZREM', P .. ':par:' .. s, tid)
  end
  if tpm and tokens ~= est then
    local hk = P .. ':tpm:' .. s
    local sec, asec = math.floor(now / 1000), math.floor(admitted / 1000)
    if tokens > est then
      redis.call('HINCRBY', hk, fmt(sec), fmt(tokens - est))
      redis.call('PEXPIRE', hk, 61000)
    elseif asec >= sec - 59 and redis.call('HEXISTS', hk, fmt(asec)) == 1 then
      redis.call('HINCRBY', hk, fmt(asec), fmt(tokens - est))
    end
  end
  if exists and cost > 0 then
    local r = redis.call('HMGET', rk, 'bdur', 'breset', 'spend')
    roll(rk, {bdur = r[1], breset = r[2], spend = r[3]}, now)
    redis.call('HINCRBY', rk, 'spend', fmt(cost))
    redis.call('HINCRBY', rk, 'total', fmt(cost))
  end
end
if h ~= '' then scope(P .. ':key:' .. h, 'k:' .. h, flags % 2 == 1, math.floor(flags / 2) % 2 == 1) end
if team_id ~= '' then
  scope(P .. ':team:' .. team_id, 't:' .. team_id, math.floor(flags / 4) % 2 == 1, math.floor(flags / 8) % 2 == 1)
end
if retention > 0 then
  redis.call('XADD', P .. ':ledger', 'MINID', '~', fmt(now - retention), '*', unpack(ARGV, 12))
end
return 1
""")

# The request is over for the client (done, or it went away): free its parallel slots now; the
# budget lease and reservation stay until the cost is settled. ARGV: P, key hash, team id, ticket id, flags
RELEASE = Script(_COMMON + r"""
local h, team_id, tid, flags = ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
if h ~= '' and math.floor(flags / 16) % 2 == 1 then redis.call('ZREM', P .. ':par:k:' .. h, tid) end
if team_id ~= '' and math.floor(flags / 64) % 2 == 1 then redis.call('ZREM', P .. ':par:t:' .. team_id, tid) end
return 1
""")

# Create a key or team if its id is free. ARGV: P, kind ('key'|'team'), id, team (keys), alias (unique:
# a key's among keys; a team's among team ids and aliases), field/value pairs...
# -> 1 created, 0 id taken, -1 team missing, -2 alias taken, -3 team id taken (another team's alias)
CREATE = Script(_COMMON + r"""
local kind, id, team, alias = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local rk = P .. ':' .. kind .. ':' .. id
if redis.call('EXISTS', rk) == 1 then return 0 end
if team ~= '' and redis.call('EXISTS', P .. ':team:' .. team) == 0 then return -1 end
if kind == 'key' and alias ~= '' then
  if redis.call('HSETNX', P .. ':key_alias', alias, id) == 0 then return -2 end
end
if kind == 'team' then
  local names = P .. ':team_name'
  local owner = redis.call('HGET', names, id)
  if owner and owner ~= id then return -3 end
  if alias ~= '' then
    owner = redis.call('HGET', names, alias)
    if owner and owner ~= id then return -2 end
  end
  redis.call('HSET', names, id, id)
  if alias ~= '' then redis.call('HSET', names, alias, id) end
end
local v = redis.call('INCR', P .. ':ver')
redis.call('HSET', rk, 'v', v, unpack(ARGV, 6))
redis.call('SADD', P .. ':' .. kind .. 's', id)
if team ~= '' then redis.call('SADD', P .. ':team:' .. team .. ':keys', id) end
return 1
""")

# Update an existing key or team (every check before any write). ARGV: P, kind, id, new team ('\0' =
# unchanged), new alias ('\0' = unchanged), number of fields to delete, fields to delete..., field/value pairs...
# -> 1 updated, 0 not found, -1 team missing, -2 alias taken. Publishes the id on P:inval.
UPDATE = Script(_COMMON + r"""
local kind, id, team, alias, ndel = ARGV[2], ARGV[3], ARGV[4], ARGV[5], tonumber(ARGV[6])
local rk = P .. ':' .. kind .. ':' .. id
if redis.call('EXISTS', rk) == 0 then return 0 end
local NUL = string.char(0)
local names = P .. (kind == 'key' and ':key_alias' or ':team_name')
local old_alias = redis.call('HGET', rk, 'alias') or ''
if team ~= NUL and team ~= '' and redis.call('EXISTS', P .. ':team:' .. team) == 0 then return -1 end
if alias ~= NUL and alias ~= old_alias and alias ~= '' then
  local owner = redis.call('HGET', names, alias)
  if owner and owner ~= id then return -2 end
end
if team ~= NUL then
  local old = redis.call('HGET', rk, 'team') or ''
  if old ~= '' then redis.call('SREM', P .. ':team:' .. old .. ':keys', id) end
  if team ~= '' then redis.call('SADD', P .. ':team:' .. team .. ':keys', id) end
  redis.call('HSET', rk, 'team', team)
end
if alias ~= NUL then
  if alias ~= old_alias then
    if alias ~= '' then redis.call('HSET', names, alias, id) end
    -- a team's id stays claimed: it is the team's label whenever the alias is empty
    if old_alias ~= '' and not (kind == 'team' and old_alias == id) and redis.call('HGET', names, old_alias) == id then
      redis.call('HDEL', names, old_alias)
    end
  end
  redis.call('HSET', rk, 'alias', alias)
end
if ndel > 0 then redis.call('HDEL', rk, unpack(ARGV, 7, 6 + ndel)) end
local v = redis.call('INCR', P .. ':ver')
if #ARGV > 6 + ndel then
  redis.call('HSET', rk, 'v', v, unpack(ARGV, 7 + ndel))
else
  redis.call('HSET', rk, 'v', v)
end
publish({(kind == 'key' and 'k:' or 't:') .. id})
return 1
""")

_DELETE_KEY_FN = r"""
local function delete_key(h)
  local rk = P .. ':key:' .. h
  local r = redis.call('HMGET', rk, 'team', 'alias')
  if redis.call('DEL', rk) == 0 then return 0 end
  if r[1] and r[1] ~= '' then redis.call('SREM', P .. ':team:' .. r[1] .. ':keys', h) end
  if r[2] and r[2] ~= '' and redis.call('HGET', P .. ':key_alias', r[2]) == h then
    redis.call('HDEL', P .. ':key_alias', r[2])
  end
  redis.call('SREM', P .. ':keys', h)
  local s = 'k:' .. h
  redis.call('DEL', P .. ':rpm:' .. s, P .. ':tpm:' .. s, P .. ':par:' .. s, P .. ':fly:' .. s, P .. ':res:' .. s)
  return 1
end
"""

# ARGV: P, key hashes... -> {deleted hashes}
DELETE_KEYS = Script(_COMMON + _DELETE_KEY_FN + r"""
local out, ids = {}, {}
for i = 2, #ARGV do
  if delete_key(ARGV[i]) == 1 then out[#out + 1] = ARGV[i]; ids[#ids + 1] = 'k:' .. ARGV[i] end
end
publish(ids)
return out
""")

# ARGV: P, team id -> {1 or 0, deleted key hashes}
DELETE_TEAM = Script(_COMMON + _DELETE_KEY_FN + r"""
local id = ARGV[2]
local rk = P .. ':team:' .. id
if redis.call('EXISTS', rk) == 0 then return {0, {}} end
local keys = redis.call('SMEMBERS', rk .. ':keys')
local gone, ids = {}, {'t:' .. id}
for _, h in ipairs(keys) do
  if delete_key(h) == 1 then gone[#gone + 1] = h; ids[#ids + 1] = 'k:' .. h end
end
local names = P .. ':team_name'
local alias = redis.call('HGET', rk, 'alias') or ''
for _, name in ipairs({id, alias}) do
  if name ~= '' and redis.call('HGET', names, name) == id then redis.call('HDEL', names, name) end
end
local s = 't:' .. id
redis.call('DEL', rk, rk .. ':keys', P .. ':rpm:' .. s, P .. ':tpm:' .. s, P .. ':par:' .. s, P .. ':fly:' .. s,
           P .. ':res:' .. s)
redis.call('SREM', P .. ':teams', id)
publish(ids)
return {1, gone}
""")

# At start: claim the names (id and alias) of teams created before P:team_name existed; a name two
# teams already share is returned ({name, team, owner, ...}) so the gateway can say so.
INDEX_TEAMS = Script(_COMMON + r"""
local names = P .. ':team_name'
local dup = {}
for _, id in ipairs(redis.call('SMEMBERS', P .. ':teams')) do
  local alias = redis.call('HGET', P .. ':team:' .. id, 'alias') or ''
  for _, name in ipairs({id, alias}) do
    if name ~= '' then
      local owner = redis.call('HGET', names, name)
      if not owner then redis.call('HSET', names, name, id)
      elseif owner ~= id then dup[#dup + 1] = name; dup[#dup + 1] = id; dup[#dup + 1] = owner end
    end
  end
end
return dup
""")

ALL_SCRIPTS = (ADMIT, SETTLE, RELEASE, CREATE, UPDATE, DELETE_KEYS, DELETE_TEAM, INDEX_TEAMS)

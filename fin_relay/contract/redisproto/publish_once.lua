-- Publish an envelope once (fin_relay/contract/publish.py, add_publish_once): what add_publish
-- sends (XADD to the capped stream, PUBLISH on the stream's channel and on the conversation's),
-- unless the marker of this publication exists; then the marker, for the redelivery that would
-- publish it again. One command, so the check and the publication need one round trip.
-- KEYS[1] the marker   KEYS[2] the stream   KEYS[3] the conversation's channel ('' = none)
-- ARGV[1] MAXLEN (approximate)   ARGV[2] the marker's value   ARGV[3] its TTL (s)
-- ARGV[4] the envelope's JSON (published)   ARGV[5..] the stream entry's field/value pairs
-- Returns 1 when published, 0 when the marker was there (nothing written).
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], '*', unpack(ARGV, 5))
redis.call('PUBLISH', KEYS[2], ARGV[4])
if KEYS[3] ~= '' then redis.call('PUBLISH', KEYS[3], ARGV[4]) end
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
return 1

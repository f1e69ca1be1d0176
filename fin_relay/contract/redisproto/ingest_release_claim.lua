-- Release the ingest's de-dup claim after a failed publish to a broker that is not Redis
-- (webhook_ingest/kombu_enqueue.py): deletes the marker only if the claim is still ours.
-- KEYS[1] the de-dup marker   ARGV[1] the claim token
-- Returns 1 when deleted, else 0.
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0

-- Enqueue one Celery job in one atomic step: idempotency marker, conversation sequence, LPUSH.
-- KEYS[1]  the Celery queue list (fin.calls), LPUSHed exactly like kombu's Redis transport does
-- KEYS[2]  the results stream ({ns}:results): its last entry id is where the job's handle
--          starts reading for the outcome (captured here, so no outcome can be missed)
-- KEYS[3]  the job hash ({ns}:job:{job_id}): gets field "seq" when the job has a conversation
-- KEYS[4]  the idempotency marker ({ns}:jobid:{job_id}) of a caller-chosen id, or '' for none
-- KEYS[5]  the conversation's sequence counter ({ns}:conv:{id}:seq), or '' for no number (no
--          conversation, or a Redis broker: its take numbers the job when a worker gets it)
-- ARGV[1]  the Celery message payload (celery_wire.task_message); '' to mark and sequence only
--          (the message then goes to another broker, published by the caller)
-- ARGV[2]  the marker's TTL in seconds (the idempotency window)
-- ARGV[3]  the TTL in seconds of the job hash and the sequence counter (the worker's)
-- Returns  {1, results_position, seq} when enqueued (seq 0 without a conversation);
--          {0, results_position_of_the_first_enqueue, 0} when the marker already existed
--          (the same id was enqueued within the window: nothing is pushed).
-- With a broker that is not Redis, the sequence number orders a conversation's calls by enqueue
-- time: the worker reads it from the job hash instead of taking one at first delivery.
local pos = '0-0'
local last = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
if #last > 0 then
  pos = last[1][1]
end
if KEYS[4] ~= '' then
  if not redis.call('SET', KEYS[4], pos, 'NX', 'EX', ARGV[2]) then
    return {0, redis.call('GET', KEYS[4]), 0}
  end
end
local seq = 0
if KEYS[5] ~= '' then
  seq = redis.call('INCR', KEYS[5])
  redis.call('EXPIRE', KEYS[5], ARGV[3])
  redis.call('HSET', KEYS[3], 'seq', seq)
  redis.call('EXPIRE', KEYS[3], ARGV[3])
end
if ARGV[1] ~= '' then
  redis.call('LPUSH', KEYS[1], ARGV[1])
end
return {1, pos, seq}

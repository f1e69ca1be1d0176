-- Undo producer_enqueue.lua's marking when the publish to another broker failed (nothing was
-- queued).
-- KEYS[1]  the idempotency marker, or '' for none (deleted: the caller may retry the same id)
-- KEYS[2]  the job hash   KEYS[3] the conversation's "next" counter
-- KEYS[4]  the conversation's "done" set (sorted set of finished sequence numbers)
-- ARGV[1]  the sequence number producer_enqueue.lua handed out (0: none)
-- ARGV[2]  TTL in seconds
-- The abandoned number is recorded as finished and "next" moves past every finished number,
-- with the function the worker's sequencing.lua "done" command uses, so later calls of the
-- conversation do not wait for a job that will never run.
if KEYS[1] ~= '' then
  redis.call('DEL', KEYS[1])
end
local seq = tonumber(ARGV[1])
if seq == 0 then
  return 0
end
redis.call('HDEL', KEYS[2], 'seq')
return sequence_advance(KEYS[3], KEYS[4], seq, ARGV[2])  -- sequence_advance.lua, prepended

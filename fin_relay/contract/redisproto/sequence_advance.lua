-- Library (prepended to sequencing.lua and producer_abandon.lua): a conversation's sequence
-- number is finished.
-- sequence_advance(next_key, done_key, seq, ttl) records seq in the conversation's done set
-- (sorted set of finished numbers; a number below "next" is already past) and moves "next"
-- past every finished number; both keys get ttl (seconds). Returns the new "next".
local function sequence_advance(next_key, done_key, seq, ttl)
  local nxt = tonumber(redis.call('GET', next_key) or '1')
  if seq >= nxt then redis.call('ZADD', done_key, seq, seq) end
  while redis.call('ZSCORE', done_key, nxt) do
    redis.call('ZREM', done_key, nxt)
    nxt = nxt + 1
  end
  redis.call('SET', next_key, nxt, 'EX', ttl)
  redis.call('EXPIRE', done_key, ttl)
  return nxt
end

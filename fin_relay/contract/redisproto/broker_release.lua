-- A worker process stopping gracefully (worker/transport.py, fix 4): no lease left behind.
-- Whatever is still in its owner set (an ack that could not be sent) is left to the next
-- reaper at once (lease end 0).
-- KEYS[1] owners zset   KEYS[2] this process's owner set   ARGV[1] owner id
-- Returns the number of tags left.
local left = redis.call('SCARD', KEYS[2])
if left == 0 then
    redis.call('ZREM', KEYS[1], ARGV[1])
else
    redis.call('ZADD', KEYS[1], 0, ARGV[1])
end
return left

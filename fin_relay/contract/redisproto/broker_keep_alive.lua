-- Renew this process's broker lease (worker/transport.py, fix 4); with ARGV[4] > 0 also claim
-- up to that many dead owners: their tags move into this process's owner set (so they are put
-- back by whoever outlives it, should it die before putting them back), their set and lease are
-- deleted, all in one step, so two reapers never claim the same owner.
-- KEYS[1] owners zset   KEYS[2] this process's owner set
-- ARGV[1] owner id   ARGV[2] owner set key prefix   ARGV[3] lease (ms)
-- ARGV[4] max owners to claim
-- Returns {{owner, lease end (ms), now (ms), {tags}}, ...}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
local limit = tonumber(ARGV[4])
if limit <= 0 then return {} end
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'WITHSCORES', 'LIMIT', 0, limit)
local claimed = {}
for i = 1, #dead, 2 do
    local owner = dead[i]
    local key = ARGV[2] .. owner
    local tags = redis.call('SMEMBERS', key)
    for j = 1, #tags, 1000 do
        redis.call('SADD', KEYS[2], unpack(tags, j, math.min(j + 999, #tags)))
    end
    redis.call('DEL', key)
    redis.call('ZREM', KEYS[1], owner)
    claimed[#claimed + 1] = {owner, dead[i + 1], tostring(now), tags}
end
return claimed

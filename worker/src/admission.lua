-- An endpoint's budget, shared by every worker (see admission.rs). One script, so that no
-- other worker's command runs between its reads and writes.
--
-- KEYS[1]  the endpoint's base key; its parts: `:rpm` and `:tpm` (the theoretical arrival
--          time of the next call, in ms, of a cell-rate pacer), `:slots` (a sorted set of the
--          calls in flight, scored by when their hold expires unless renewed), `:shrink` (the
--          factor and time of the last cut after an upstream 429)
-- ARGV[1]  mode: `take`, `release` or `throttle`
-- take:     ARGV[2] rpm  ARGV[3] tpm  ARGV[4] concurrency (0: not limited)
--           ARGV[5] tokens needed  ARGV[6] holder  ARGV[7] slot hold ms
--           ARGV[8] a call's time in a slot until one was measured, ms
--           answers {admitted 0/1, wait ms, reason (0 none, 1 requests, 2 tokens,
--           3 concurrency), effective rpm, tpm, concurrency, now ms}
-- release:  ARGV[2] holder  ARGV[3] token correction (actual - estimated)  ARGV[4] tpm
--           ARGV[5] when the call was admitted (ms)  answers 1
-- throttle: ARGV[2] smallest factor  ARGV[3] when the refused call was admitted (ms)
--           answers the factor in force * 1000, negated when this 429 cut nothing
-- renew:    ARGV[2] holder  ARGV[3] slot hold ms  answers 1
--
-- Every mode takes ARGV[9] hold ms and ARGV[10] recovery ms of a cut (after a cut the limits
-- stay cut for `hold`, then return linearly to the declared ones over `recovery`), and
-- ARGV[11] the furthest turn promised to a refused caller, ms.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local base = KEYS[1]
local mode = ARGV[1]
local hold, recovery = tonumber(ARGV[9]), tonumber(ARGV[10])

-- the share of the declared limits in force now
local function factor()
  local s = redis.call('HMGET', base .. ':shrink', 'factor', 'at')
  if not s[1] then return 1, nil end
  local f0, at = tonumber(s[1]), tonumber(s[2])
  local since = now - at
  if since <= hold then return f0, at end
  return math.min(1, f0 + (1 - f0) * (since - hold) / math.max(recovery, 1)), at
end

local function effective(limit, f)
  if limit <= 0 then return 0 end
  return math.max(1, math.floor(limit * f))
end

local function fmt(x) return string.format('%.3f', x) end

if mode == 'take' then
  local f = factor()
  local rpm = effective(tonumber(ARGV[2]), f)
  local tpm = effective(tonumber(ARGV[3]), f)
  local conc = effective(tonumber(ARGV[4]), f)
  local need = tonumber(ARGV[5])
  local wait, reason = 0, 0
  local rtat, ttat = now, now
  if rpm > 0 then
    rtat = math.max(tonumber(redis.call('GET', base .. ':rpm') or '0'), now)
    if rtat > now then wait = rtat - now; reason = 1 end
  end
  if tpm > 0 then
    ttat = math.max(tonumber(redis.call('GET', base .. ':tpm') or '0'), now)
    if ttat - now > wait then wait = ttat - now; reason = 2 end
  end
  if conc > 0 then
    redis.call('ZREMRANGEBYSCORE', base .. ':slots', '-inf', now)
    if redis.call('ZCARD', base .. ':slots') >= conc and wait == 0 then
      -- A slot frees about every (mean call time / slots); callers refused together are
      -- promised successive turns of that, as for the per-minute budgets.
      local mean = tonumber(redis.call('GET', base .. ':calltime') or ARGV[8])
      local step = math.max(mean / conc, 10)
      local hkey = base .. ':slotturns'
      local promise = math.max(tonumber(redis.call('GET', hkey) or '0'), now + step)
      promise = math.min(promise, now + tonumber(ARGV[11]))
      redis.call('SET', hkey, fmt(promise + step), 'PX', math.ceil(promise + step - now) + 1000)
      wait = promise - now; reason = 3
    end
  end
  if reason == 1 or reason == 2 then
    -- Callers refused together are promised successive turns (a horizon one call's pacing
    -- further each), so that each comes back about once instead of all at every turn.
    local step = 0
    if rpm > 0 then step = 60000 / rpm end
    if tpm > 0 then step = math.max(step, need * 60000 / tpm) end
    local hkey = base .. ':horizon'
    local promise = math.max(tonumber(redis.call('GET', hkey) or '0'), now + wait)
    promise = math.min(promise, now + tonumber(ARGV[11]))
    redis.call('SET', hkey, fmt(promise + step), 'PX', math.ceil(promise + step - now) + 1000)
    wait = promise - now
  end
  if reason > 0 then
    return {0, math.ceil(wait), reason, rpm, tpm, conc, now}
  end
  if rpm > 0 then
    local next = rtat + 60000 / rpm
    redis.call('SET', base .. ':rpm', fmt(next), 'PX', math.ceil(next - now) + 1000)
  end
  if tpm > 0 then
    local next = ttat + need * 60000 / tpm
    redis.call('SET', base .. ':tpm', fmt(next), 'PX', math.ceil(next - now) + 1000)
  end
  if conc > 0 then
    local ttl = tonumber(ARGV[7])
    redis.call('ZADD', base .. ':slots', now + ttl, ARGV[6])
    redis.call('PEXPIRE', base .. ':slots', ttl * 2)
  end
  return {1, 0, 0, rpm, tpm, conc, now}
end

if mode == 'renew' then
  local ttl = tonumber(ARGV[3])
  redis.call('ZADD', base .. ':slots', 'XX', now + ttl, ARGV[2])
  redis.call('PEXPIRE', base .. ':slots', ttl * 2)
  return 1
end

if mode == 'release' then
  local admitted = tonumber(ARGV[5])
  if redis.call('ZREM', base .. ':slots', ARGV[2]) == 1 and admitted > 0 then
    -- the mean time a call holds its slot (a moving average), for the turns of refused callers
    local took = math.max(now - admitted, 0)
    local mean = tonumber(redis.call('GET', base .. ':calltime') or tostring(took))
    redis.call('SET', base .. ':calltime', fmt(mean * 0.8 + took * 0.2), 'PX', 600000)
  end
  local delta, tpm = tonumber(ARGV[3]), tonumber(ARGV[4])
  if delta ~= 0 and tpm > 0 then
    -- the pacer's next arrival moves by the tokens estimated but not used (or used beyond)
    local tat = tonumber(redis.call('GET', base .. ':tpm') or '0')
    if tat > now then
      local next = math.max(now, tat + delta * 60000 / tpm)
      redis.call('SET', base .. ':tpm', fmt(next), 'PX', math.ceil(next - now) + 1000)
    end
  end
  return 1
end

if mode == 'throttle' then
  local f, at = factor()
  -- a call admitted before the last cut ran under the old limits: its 429 is no news
  if at and tonumber(ARGV[3]) <= at then return -math.floor(f * 1000) end
  local cut = math.max(tonumber(ARGV[2]), f / 2)
  redis.call('HSET', base .. ':shrink', 'factor', fmt(cut), 'at', now)
  redis.call('PEXPIRE', base .. ':shrink', hold + recovery + 1000)
  return math.floor(cut * 1000)
end

return redis.error_reply('unknown admission mode')

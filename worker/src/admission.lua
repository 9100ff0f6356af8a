-- An endpoint's budget, shared by every worker (see admission.rs). One script, so that no
-- other worker's command runs between its reads and writes.
--
-- KEYS[1]  the endpoint's base key; its parts: `:rpm` and `:tpm` (the theoretical arrival
--          time of the next call, in ms, of a cell-rate pacer), `:slots` (a sorted set of the
--          calls in flight, scored by when their hold expires unless renewed), `:shrink` (the
--          factor and time of the last cut after an upstream 429), `:line` (the callers
--          waiting in place, scored by class then arrival, numbered by `:arrivals`), `:gone`
--          (when each of them is given up if it has not asked again), `:promise:<class>` (the
--          next time promised to a caller sent back), `:calltime` (a call's mean time in its
--          slot)
-- ARGV[1]  mode: `take`, `release`, `throttle`, `renew` or `leave`
-- take:     ARGV[2] rpm  ARGV[3] tpm  ARGV[4] concurrency (0: not limited)
--           ARGV[5] tokens needed  ARGV[6] holder  ARGV[7] slot hold ms
--           ARGV[8] a call's time in a slot until one was measured, ms
--           ARGV[12] class (0 interactive, 1 batch)  ARGV[13] how long past its turn a
--           waiting caller keeps its place, ms  ARGV[14] how late a turn may be taken, ms
--           ARGV[15] the furthest turn promised to a caller sent back, ms
--           answers {admitted 0/1, wait ms, reason (0 none, 1 requests, 2 tokens,
--           3 concurrency), effective rpm, tpm, concurrency, now ms, in line 0/1}
-- release:  ARGV[2] holder  ARGV[3] token correction (actual - estimated)  ARGV[4] tpm
--           ARGV[5] when the call was admitted (ms)  answers 1
-- throttle: ARGV[2] smallest factor  ARGV[3] when the refused call was admitted (ms)
--           answers the factor in force * 1000, negated when this 429 cut nothing
-- renew:    ARGV[2] holder  ARGV[3] slot hold ms  answers 1
-- leave:    ARGV[2] holder (a waiting caller that stopped waiting)  answers 1
--
-- Every mode takes ARGV[9] hold ms and ARGV[10] recovery ms of a cut (after a cut the limits
-- stay cut for `hold`, then return linearly to the declared ones over `recovery`), and
-- ARGV[11] the longest wait in place (a caller further back leaves the line).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local base = KEYS[1]
local mode = ARGV[1]
local hold, recovery = tonumber(ARGV[9]), tonumber(ARGV[10])
local line, gone = base .. ':line', base .. ':gone'

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

local function leave(holder)
  redis.call('ZREM', line, holder)
  redis.call('ZREM', gone, holder)
end

if mode == 'take' then
  local f = factor()
  local rpm = effective(tonumber(ARGV[2]), f)
  local tpm = effective(tonumber(ARGV[3]), f)
  local conc = effective(tonumber(ARGV[4]), f)
  local need = tonumber(ARGV[5])
  local holder = ARGV[6]
  local horizon, class = tonumber(ARGV[11]), tonumber(ARGV[12])
  local grace, late = tonumber(ARGV[13]), tonumber(ARGV[14])

  -- Callers that stopped asking (their worker died) give their place up.
  local lost = redis.call('ZRANGEBYSCORE', gone, '-inf', now, 'LIMIT', 0, 500)
  if #lost > 0 then
    redis.call('ZREM', line, unpack(lost))
    redis.call('ZREM', gone, unpack(lost))
  end
  -- The line: interactive callers before batch ones, each class in order of arrival. A
  -- caller's turn is its place in it, so the budget goes to callers in that order whoever
  -- asks first, and a batch's backlog waits behind an interactive request.
  if not redis.call('ZSCORE', line, holder) then
    local arrival = redis.call('INCR', base .. ':arrivals')
    redis.call('ZADD', line, string.format('%.0f', class * 1e15 + arrival), holder)
  end
  local rank = redis.call('ZRANK', line, holder)

  -- Per-minute budgets: turns one call's pacing apart, from the next free one (which may be
  -- up to `late` in the past, so that a caller coming back a little late loses no turn).
  local rstep, tstep = 0, 0
  if rpm > 0 then rstep = 60000 / rpm end
  if tpm > 0 then tstep = need * 60000 / tpm end
  local step = math.max(rstep, tstep)
  local rtat = tonumber(redis.call('GET', base .. ':rpm') or '0')
  local ttat = tonumber(redis.call('GET', base .. ':tpm') or '0')
  local from = now - late
  if rpm > 0 then from = math.max(from, rtat) end
  if tpm > 0 then from = math.max(from, ttat) end
  local wait, reason = 0, 0
  if step > 0 and from + rank * step > now then
    wait = from + rank * step - now
    if tstep > rstep or (tpm > 0 and ttat > rtat) then reason = 2 else reason = 1 end
  end
  -- Calls at once: the callers ahead take the free slots first; a slot frees about every
  -- (mean call time / slots).
  local cstep = 0
  if conc > 0 then
    redis.call('ZREMRANGEBYSCORE', base .. ':slots', '-inf', now)
    local free = conc - redis.call('ZCARD', base .. ':slots')
    cstep = math.max(tonumber(redis.call('GET', base .. ':calltime') or ARGV[8]) / conc, 10)
    if rank >= free then
      local cwait = (rank - math.max(free, 0) + 1) * cstep
      if cwait > wait then wait = cwait; reason = 3 end
    end
  end

  if reason > 0 then
    if wait <= horizon then
      redis.call('ZADD', gone, string.format('%.0f', now + wait + grace), holder)
      redis.call('PEXPIRE', line, horizon + grace + 60000)
      redis.call('PEXPIRE', gone, horizon + grace + 60000)
      return {0, math.ceil(wait), reason, rpm, tpm, conc, now, 1}
    end
    -- Too far back to wait in place: the caller leaves the line and is promised a time to
    -- come back, when its turn would be about half the longest wait away. Callers sent back
    -- together are promised successive turns, so each comes back about once.
    leave(holder)
    local pstep = step
    if reason == 3 then pstep = cstep end
    local pkey = base .. ':promise:' .. class
    local promise = math.max(tonumber(redis.call('GET', pkey) or '0'), now + wait - horizon / 2)
    promise = math.min(promise, now + tonumber(ARGV[15]))
    redis.call('SET', pkey, fmt(promise + pstep), 'PX', math.ceil(promise + pstep - now) + 1000)
    return {0, math.ceil(promise - now), reason, rpm, tpm, conc, now, 0}
  end

  leave(holder)
  if rpm > 0 then
    local next = math.max(rtat, now - late) + rstep
    redis.call('SET', base .. ':rpm', fmt(next), 'PX', math.ceil(next - now) + 1000)
  end
  if tpm > 0 then
    local next = math.max(ttat, now - late) + tstep
    redis.call('SET', base .. ':tpm', fmt(next), 'PX', math.ceil(next - now) + 1000)
  end
  if conc > 0 then
    local ttl = tonumber(ARGV[7])
    redis.call('ZADD', base .. ':slots', now + ttl, holder)
    redis.call('PEXPIRE', base .. ':slots', ttl * 2)
  end
  return {1, 0, 0, rpm, tpm, conc, now, 0}
end

if mode == 'leave' then
  leave(ARGV[2])
  return 1
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

-- One circuit breaker, kept in Redis and changed only by this script, so every call result and
-- every state change is one atomic step shared by all processes.
--
-- KEYS[1] state hash   KEYS[2] window list (newest first)   KEYS[3] set of breaker names
-- KEYS[4] stream of state changes (for the audit log; capped)
-- ARGV: op, name, window_size, min_calls, failure_rate_pct, slow_rate_pct, wait_ms,
--       probes, probe_lease_ms, config_json ('' = keep), epoch, failed, slow, probe,
--       target (force: open | close | reset), reason (force)
-- op: acquire | record | release | force | status
--
-- Returns {from ('' = no change), state, epoch, allowed, probe, reason, calls, failures, slow,
--          opened_at_ms, now_ms, probes_in_flight, probe_successes}
-- States: closed, open, half_open, forced_open, forced_closed. Window entries: 1 = failed,
-- 2 = slow (added). Every change of state bumps the epoch and clears the window: a call admitted
-- before the change reports a stale epoch and no longer counts.

redis.replicate_commands() -- TIME below, then writes (needed on Redis < 7; a no-op on 7+)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local key, wkey, registry, changes = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local op, name = ARGV[1], ARGV[2]
local size, min_calls = tonumber(ARGV[3]), tonumber(ARGV[4])
local fail_rate, slow_rate = tonumber(ARGV[5]), tonumber(ARGV[6])
local wait_ms, probes, lease_ms = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])

local h = redis.call('HMGET', key, 'state', 'epoch', 'opened_at', 'in_flight', 'probe_ok',
  'lease_until', 'n', 'nf', 'ns')
local state = h[1] or 'closed'
local epoch = tonumber(h[2]) or 0
local opened_at = tonumber(h[3]) or 0
local in_flight = tonumber(h[4]) or 0
local probe_ok = tonumber(h[5]) or 0
local lease_until = tonumber(h[6]) or 0
local n, nf, ns = tonumber(h[7]) or 0, tonumber(h[8]) or 0, tonumber(h[9]) or 0

local from, reason = '', ''
local allowed, probe = 0, 0

local function go(to, why)
  from, reason = state, why
  state = to
  epoch = epoch + 1
  redis.call('DEL', wkey)
  n, nf, ns = 0, 0, 0
  in_flight, probe_ok, lease_until = 0, 0, 0
  if to == 'open' or to == 'forced_open' then opened_at = now else opened_at = 0 end
  redis.call('HSET', key, 'changed_at', now)
end

if op == 'status' then
  return {from, state, epoch, allowed, probe, reason, n, nf, ns, opened_at, now, in_flight,
    probe_ok}
end

redis.call('SADD', registry, name)
if ARGV[10] ~= '' then redis.call('HSET', key, 'config', ARGV[10]) end

if op == 'acquire' then
  if state == 'open' and now >= opened_at + wait_ms then
    go('half_open', 'waited ' .. wait_ms .. ' ms in open')
  end
  if state == 'half_open' and in_flight > 0 and now > lease_until then
    in_flight = 0 -- the probes' callers died or hung past their lease: admit new probes
  end
  if state == 'closed' or state == 'forced_closed' then
    allowed = 1
  elseif state == 'half_open' and in_flight < probes then
    allowed, probe = 1, 1
    in_flight = in_flight + 1
    lease_until = now + lease_ms
  end
elseif op == 'record' then
  local failed, slow = ARGV[12] == '1', ARGV[13] == '1'
  if tonumber(ARGV[11]) ~= epoch then
    reason = 'stale'
  elseif state == 'half_open' then
    if ARGV[14] == '1' and in_flight > 0 then in_flight = in_flight - 1 end
    if failed then
      go('open', 'a half-open probe failed')
    elseif slow then
      go('open', 'a half-open probe was slow')
    else
      probe_ok = probe_ok + 1
      if probe_ok >= probes then go('closed', probe_ok .. ' half-open probes succeeded') end
    end
  elseif state == 'closed' or state == 'forced_closed' then
    local entry = (failed and 1 or 0) + (slow and 2 or 0)
    redis.call('LPUSH', wkey, entry)
    n = n + 1
    if failed then nf = nf + 1 end
    if slow then ns = ns + 1 end
    while n > size do
      local old = tonumber(redis.call('RPOP', wkey)) or 0
      n = n - 1
      if old % 2 == 1 then nf = nf - 1 end
      if old >= 2 then ns = ns - 1 end
    end
    if state == 'closed' and n >= min_calls then
      local fr, sr = nf * 100 / n, ns * 100 / n
      if fr >= fail_rate then
        go('open', string.format('failure rate %.1f%% >= %.1f%% over the last %d calls',
          fr, fail_rate, n))
      elseif sr >= slow_rate then
        go('open', string.format('slow-call rate %.1f%% >= %.1f%% over the last %d calls',
          sr, slow_rate, n))
      end
    end
  end
elseif op == 'release' then
  if tonumber(ARGV[11]) == epoch and state == 'half_open' and ARGV[14] == '1'
      and in_flight > 0 then
    in_flight = in_flight - 1
  end
elseif op == 'force' then
  local target, why = ARGV[15], ARGV[16]
  if target == 'open' then
    go('forced_open', why)
  elseif target == 'close' then
    go('forced_closed', why)
  else
    go('closed', why)
    if from == 'closed' then from = '' end -- a reset of a closed breaker only clears its window
  end
else
  return redis.error_reply('unknown breaker op ' .. tostring(op))
end

redis.call('HSET', key, 'state', state, 'epoch', epoch, 'opened_at', opened_at,
  'in_flight', in_flight, 'probe_ok', probe_ok, 'lease_until', lease_until,
  'n', n, 'nf', nf, 'ns', ns)
if from ~= '' then
  -- In the same atomic step as the change: the audit relay turns each entry into an event.
  redis.call('XADD', changes, 'MAXLEN', '~', 10000, '*', 'breaker', name, 'from', from,
    'to', state, 'reason', reason, 'at', now)
end
return {from, state, epoch, allowed, probe, reason, n, nf, ns, opened_at, now, in_flight,
  probe_ok}

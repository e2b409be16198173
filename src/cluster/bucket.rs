//! The cluster-wide token buckets behind the attempt limits and the failed-join budget: one
//! Lua script, so reading, refilling and taking (or giving back) tokens is one atomic step in
//! Redis however many nodes ask at once. Time is Redis's own (`TIME`), so nodes with skewed
//! clocks still share one refill rate.

/// `KEYS`: the buckets (each a hash: `tokens`, `at`); `ARGV[1]`: `take` or `give`;
/// `ARGV[i + 1]`: tokens per minute of `KEYS[i]`.
///
/// `take` takes one token from every bucket, or from none when any is empty (so a bucket
/// never pays for an attempt another refused), and answers 1 when it took them, 0 when not.
/// `give` gives one token back to every bucket, up to its capacity: the undoing of a `take`
/// for an attempt that did not count after all. An idle bucket expires after a minute, when
/// it would be full again anyway, so Redis holds only recent addresses.
pub(super) const SCRIPT: &str = r#"
local give = ARGV[1] == 'give'
local time = redis.call('TIME')
local now = tonumber(time[1]) + tonumber(time[2]) / 1000000
local tokens = {}
local taken = 1
for i, key in ipairs(KEYS) do
  local capacity = tonumber(ARGV[i + 1])
  local state = redis.call('HMGET', key, 'tokens', 'at')
  local held = tonumber(state[1]) or capacity
  local at = tonumber(state[2]) or now
  held = math.min(capacity, held + math.max(0, now - at) * capacity / 60)
  if give then
    held = math.min(capacity, held + 1)
  elseif held < 1 then
    taken = 0
  end
  tokens[i] = held
end
for i, key in ipairs(KEYS) do
  local held = tokens[i]
  if not give and taken == 1 then
    held = held - 1
  end
  redis.call('HSET', key, 'tokens', tostring(held), 'at', tostring(now))
  redis.call('EXPIRE', key, 61)
end
return taken
"#;

//! The cluster-wide token bucket behind the attempt limits: one Lua script, so reading,
//! refilling and taking a token is one atomic step in Redis however many nodes ask at once.
//! Time is Redis's own (`TIME`), so nodes with skewed clocks still share one refill rate.

/// `KEYS[1]`: the bucket (a hash: `tokens`, `at`); `ARGV[1]`: tokens per minute. Answers 1
/// when a token was taken, 0 when the bucket is empty. An idle bucket expires after a
/// minute, when it would be full again anyway, so Redis holds only recent addresses.
pub(super) const TAKE: &str = r#"
local capacity = tonumber(ARGV[1])
local time = redis.call('TIME')
local now = tonumber(time[1]) + tonumber(time[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or capacity
local at = tonumber(state[2]) or now
tokens = math.min(capacity, tokens + math.max(0, now - at) * capacity / 60)
local taken = 0
if tokens >= 1 then
  tokens = tokens - 1
  taken = 1
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('EXPIRE', KEYS[1], 61)
return taken
"#;

//! Lua scripts run atomically by Redis. Each touches exactly one key (the
//! session's), so they also work on Redis Cluster.
//!
//! A session record is a hash: `r` route, `c` created (unix ms), `s` last
//! seen (unix ms), `v` version (incremented on every rebind), with a TTL of
//! the idle timeout, so Redis itself expires idle sessions.

use redis::Script;
use std::sync::LazyLock;

/// Bind: ARGV = route, now_ms, ttl_ms. Returns the previous route or nil.
pub static BIND: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local old = redis.call('HGET', KEYS[1], 'r')
if not old then redis.call('HSET', KEYS[1], 'c', ARGV[2]) end
redis.call('HSET', KEYS[1], 'r', ARGV[1], 's', ARGV[2])
if old ~= ARGV[1] then redis.call('HINCRBY', KEYS[1], 'v', 1) end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return old
",
    )
});

/// Claim an orphan: ARGV = from ('' when unbound), proposed, now_ms,
/// ttl_ms. If another balancer already moved the session elsewhere, keep
/// that; otherwise bind `proposed`. Returns the agreed route.
pub static CLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local cur = redis.call('HGET', KEYS[1], 'r')
if cur and cur ~= ARGV[1] and cur ~= ARGV[2] then
  redis.call('HSET', KEYS[1], 's', ARGV[3])
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
  return cur
end
if not cur then redis.call('HSET', KEYS[1], 'c', ARGV[3]) end
redis.call('HSET', KEYS[1], 'r', ARGV[2], 's', ARGV[3])
redis.call('HINCRBY', KEYS[1], 'v', 1)
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return ARGV[2]
",
    )
});

/// Resync after an outage: write the local binding only where Redis has
/// none, never overwriting a newer decision. ARGV = route, now_ms, ttl_ms.
pub static SET_IF_ABSENT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'r', ARGV[1], 'c', ARGV[2], 's', ARGV[2], 'v', 1)
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
",
    )
});

/// Forget: returns the route it had, if any.
pub static FORGET: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local old = redis.call('HGET', KEYS[1], 'r')
redis.call('DEL', KEYS[1])
return old
",
    )
});

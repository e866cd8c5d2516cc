//! Lua scripts run atomically by Redis. Each touches exactly one key (the
//! session's, or the shared states hash), so they also work on Redis
//! Cluster.
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

/// Publish an operator's state change: KEYS[1] = the states hash, ARGV =
/// route, state name, at_ms, ceiling_ms. The field becomes
/// `"<state>:<at_ms>"` only if that is newer than what is stored (same
/// millisecond: the more restrictive state wins, as in
/// `StateChange::supersedes`), so a late or repeated publish never undoes
/// a newer action. A malformed stored value, or one dated after the
/// writer's ceiling (its clock plus the allowed skew: a balancer whose
/// clock ran ahead, or a forged value), is overwritten. Returns 1 if
/// written, 0 if a newer (or the same) change was kept.
pub static STATE_SET: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local rank = {active = 0, draining = 1, disabled = 2, stopped = 3}
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur then
  local s, t = string.match(cur, '^(%l+):(%d+)$')
  local ct, nt = tonumber(t), tonumber(ARGV[3])
  if s and rank[s] and ct and ct <= tonumber(ARGV[4]) then
    if ct > nt then return 0 end
    if ct == nt and rank[s] >= rank[ARGV[2]] then return 0 end
  end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. ':' .. ARGV[3])
return 1
",
    )
});

//! Lua scripts run atomically by Redis. Each touches exactly one key (the
//! session's, or the shared states hash), so they also work on Redis
//! Cluster.
//!
//! A session record is a hash: `r` route, `c` created (unix ms), `s` last
//! seen (unix ms), `v` version (incremented on every rebind), `t` when the
//! route last changed (unix ms of the decision), with a TTL of the idle
//! timeout, so Redis itself expires idle sessions. Every key a script
//! writes gets a TTL.

use redis::Script;
use std::sync::LazyLock;

/// Bind: ARGV = route, now_ms, ttl_ms, at_ms (when this balancer decided
/// the binding). A write-behind bind can arrive after another balancer's
/// newer decision (a failover claim): a binding to another route changed
/// after `at_ms` is kept, only refreshed. Returns `{previous route or '',
/// route now stored}`. Every case is one read, one `HSET` and one
/// `PEXPIRE` (a brand-new session, the common case, gets all its fields in
/// one `HSET`), so the write-through of a new session costs Redis little.
pub static BIND: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local cur = redis.call('HMGET', KEYS[1], 'r', 't', 'v')
local old, t = cur[1], tonumber(cur[2])
if old and old ~= ARGV[1] and t and t > tonumber(ARGV[4]) then
  redis.call('HSET', KEYS[1], 's', ARGV[2])
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return {old, old}
end
if old == ARGV[1] then
  redis.call('HSET', KEYS[1], 'r', ARGV[1], 's', ARGV[2])
else
  local v = (tonumber(cur[3]) or 0) + 1
  if old then
    redis.call('HSET', KEYS[1], 'r', ARGV[1], 's', ARGV[2], 'v', v, 't', ARGV[4])
  else
    redis.call('HSET', KEYS[1], 'r', ARGV[1], 's', ARGV[2], 'c', ARGV[2], 'v', v, 't', ARGV[4])
  end
end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return {old or '', ARGV[1]}
",
    )
});

/// Refresh a session's last-seen time and TTL, only if it still exists
/// (never recreating an expired record as a route-less hash). ARGV =
/// now_ms, ttl_ms. Returns the stored route or nil.
pub static TOUCH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local r = redis.call('HGET', KEYS[1], 'r')
if not r then return false end
redis.call('HSET', KEYS[1], 's', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return r
",
    )
});

/// Add a member to a route's counting set (KEYS[1]), ARGV = score
/// (expiry, unix ms), member, ttl_ms, and make sure the set itself expires
/// no earlier than `ttl_ms` from now: its members are dead by then, and a
/// set nobody writes any more must not stay in Redis forever. A longer TTL
/// (another balancer with a longer idle timeout) is kept. The writer runs
/// it for a route's first add of each second (with `ttl_ms` one second
/// longer than a session's, so the set outlives its members) and sends
/// the other adds as plain `ZADD`s, which cost Redis far less.
pub static COUNT_ADD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[3]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
end
return 1
",
    )
});

/// Bump a counter (KEYS[1]) with the TTL rule of [`COUNT_ADD`] (ARGV =
/// ttl_ms); returns the new value. Used for a route's move counter (one
/// nobody bumps for that long has nothing left to invalidate) and for the
/// per-window admission count of unconfirmed claims.
pub static BUMP: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local n = redis.call('INCR', KEYS[1])
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
return n
",
    )
});

/// Claim an orphan: ARGV = from ('' when unbound), proposed, now_ms,
/// ttl_ms. If another balancer already moved the session elsewhere, keep
/// that; otherwise bind `proposed`, stamping `t` so an older write-behind
/// [`BIND`] cannot undo the move. Returns the agreed route.
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
redis.call('HSET', KEYS[1], 'r', ARGV[2], 's', ARGV[3], 't', ARGV[3])
redis.call('HINCRBY', KEYS[1], 'v', 1)
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return ARGV[2]
",
    )
});

/// Failover claim for an id no backend confirmed (KEYS[1] =
/// `<prefix>u:<id hash>`, a plain string with a TTL, never counted):
/// ARGV = from, proposed, ttl_ms, may_create (`1`/`0`). Another
/// balancer's choice stands (and is refreshed) unless it is `from`, the
/// node that just failed; otherwise `proposed` is stored, only if
/// `may_create`. Returns the agreed route, or nil when nothing is stored
/// and nothing may be.
pub static UNCONFIRMED_CLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local cur = redis.call('GET', KEYS[1])
if cur and cur ~= ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return cur
end
if ARGV[4] ~= '1' then return false end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
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

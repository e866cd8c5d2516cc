//! The background writer's batches: the commands of many queued writes
//! sent together, one answer per command, so one failing command (a key
//! of the wrong type, a script Redis forgot) never costs the others theirs.

use super::conn::Handle;
use redis::{Cmd, RedisResult, Script, Value};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One command of a batch, with the script it runs (loaded again when
/// Redis answers NOSCRIPT: restarted or flushed).
pub(super) struct Write {
    pub cmd: Cmd,
    script: Option<&'static Script>,
}

impl Write {
    /// A command that runs no script.
    pub fn plain(cmd: Cmd) -> Write {
        Write { cmd, script: None }
    }

    /// `script` on one key (every script here touches one key, see
    /// [`super::scripts`]); the caller adds its arguments to `cmd`.
    pub fn eval(script: &'static Script, key: &str) -> Write {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(script.get_hash()).arg(1).arg(key);
        Write {
            cmd,
            script: Some(script),
        }
    }
}

/// Send `writes` in order; one result per write. Over one server
/// (standalone, Sentinel) they go as one non-atomic pipeline: one message
/// each way for the whole batch. On a Cluster they go one by one (still
/// pipelined by the connection), because a pipeline there must stay in one
/// hash slot and a batch spans many. `Err` when Redis could not be reached.
pub(super) async fn send(h: &mut Handle, writes: &[Write]) -> RedisResult<Vec<RedisResult<Value>>> {
    if writes.is_empty() {
        return Ok(Vec::new());
    }
    let mut results = if h.is_cluster() {
        one_by_one(h, writes).await
    } else {
        pipelined(h, writes).await?
    };
    reload_missing_scripts(h, writes, &mut results).await;
    Ok(results)
}

async fn pipelined(h: &mut Handle, writes: &[Write]) -> RedisResult<Vec<RedisResult<Value>>> {
    let mut pipe = redis::Pipeline::with_capacity(writes.len());
    for w in writes {
        pipe.add_command(w.cmd.clone());
    }
    pipe.ignore_errors().query_async(h).await
}

async fn one_by_one(h: &Handle, writes: &[Write]) -> Vec<RedisResult<Value>> {
    let jobs = writes.iter().map(|w| {
        let mut h = h.clone();
        async move { w.cmd.query_async::<Value>(&mut h).await }
    });
    futures_util::future::join_all(jobs).await
}

/// A write whose script Redis did not know: load the script, send it again.
async fn reload_missing_scripts(
    h: &mut Handle,
    writes: &[Write],
    results: &mut [RedisResult<Value>],
) {
    for (w, r) in writes.iter().zip(results.iter_mut()) {
        let (Some(script), Err(e)) = (w.script, &*r) else {
            continue;
        };
        if e.kind() != redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) {
            continue;
        }
        *r = match script.prepare_invoke().load_async(h).await {
            Ok(_) => w.cmd.query_async::<Value>(h).await,
            Err(e) => Err(e),
        };
    }
}

/// When the writer last renewed each route's counting-set TTL, so a busy
/// route's adds are plain `ZADD`s and only its first add of each second
/// runs [`super::scripts::COUNT_ADD`].
#[derive(Default)]
pub(super) struct CountTtl(HashMap<Arc<str>, Instant>);

/// How often a route's counting set has its TTL renewed at most; the TTL
/// given is this much longer than a session's, so the set outlives every
/// member added since the last renewal.
pub(super) const COUNT_TTL_EVERY: Duration = Duration::from_secs(1);

/// Routes remembered at most (configured routes only; far more than any
/// cluster has).
const MAX_ROUTES: usize = 4096;

impl CountTtl {
    /// Whether `route`'s set needs its TTL renewed with this add (never
    /// renewed, or not for [`COUNT_TTL_EVERY`]); if so it counts as
    /// renewed from now.
    pub fn due(&mut self, route: &Arc<str>) -> bool {
        let now = Instant::now();
        if let Some(last) = self.0.get_mut(route) {
            if now.duration_since(*last) < COUNT_TTL_EVERY {
                return false;
            }
            *last = now;
            return true;
        }
        if self.0.len() >= MAX_ROUTES {
            self.0.clear();
        }
        self.0.insert(route.clone(), now);
        true
    }

    /// A batch had errors: renew every set with its next add (one of the
    /// renewals may be what failed).
    pub fn forget(&mut self) {
        self.0.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_route_is_renewed_once_per_interval_and_again_after_a_failure() {
        let mut t = CountTtl::default();
        let a: Arc<str> = "a".into();
        let b: Arc<str> = "b".into();
        assert!(t.due(&a));
        assert!(!t.due(&a));
        assert!(t.due(&b));
        t.forget();
        assert!(t.due(&a));
        assert!(!t.due(&a));
    }
}

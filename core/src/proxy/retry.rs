//! Retry policy after a failure before any response byte: stay on the
//! session's node (a fresh connection) or move to its heir at once.
//!
//! Moving is cheap when a replica can continue the session (same `domain`,
//! or `session.failover = "replicated"`) and costly when none can (the user
//! loses the session). A node going away (a rolling restart) closes its
//! pooled connections first and resets new ones a moment later, so staying
//! costs a second failed attempt; moving answers from the heir at once.

use crate::backend::Backend;
use crate::config::raw::{FailoverScope, RetrySameNode};
use crate::routing::Reason;
use std::sync::Arc;

/// Whether the next attempt may go to the node that just failed (on a
/// fresh connection), rather than to another node.
pub fn stay_on_node(
    policy: RetrySameNode,
    scope: FailoverScope,
    backends: &[Arc<Backend>],
    node: usize,
    reason: &Reason,
) -> bool {
    match policy {
        RetrySameNode::Always => true,
        RetrySameNode::Never => false,
        // A request without a session loses nothing by moving, unless
        // there is nowhere to move (a single node, or the others down):
        // then a fresh connection to this one is its only chance.
        RetrySameNode::Auto if *reason == Reason::New => !has_other(backends, node),
        RetrySameNode::Auto => !has_replica(scope, backends, node),
    }
}

/// Whether some other node may take a new session.
fn has_other(backends: &[Arc<Backend>], node: usize) -> bool {
    backends
        .iter()
        .enumerate()
        .any(|(i, b)| i != node && b.takes_new_as_last_resort())
}

/// Whether some other usable node holds a replica of `node`'s sessions.
fn has_replica(scope: FailoverScope, backends: &[Arc<Backend>], node: usize) -> bool {
    let home = &backends[node];
    backends.iter().enumerate().any(|(i, b)| {
        i != node
            && b.takes_new_as_last_resort()
            && match scope {
                FailoverScope::Replicated => true,
                FailoverScope::Domain => {
                    home.config.domain.is_some() && b.config.domain == home.config.domain
                }
            }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::PoolSettings;
    use crate::config::BackendConfig;

    fn node(route: &str, domain: Option<&str>) -> Arc<Backend> {
        let mut cfg = BackendConfig::plain(route, "127.0.0.1", 1, 1);
        cfg.domain = domain.map(Into::into);
        Arc::new(Backend::new(
            cfg,
            PoolSettings::from_upstream(&Default::default()),
        ))
    }

    const STICKY: Reason = Reason::Sticky;

    #[test]
    fn auto_moves_only_where_a_replica_can_continue() {
        let auto = RetrySameNode::Auto;
        let dom = FailoverScope::Domain;
        let plain = [node("a", None), node("b", None)];
        assert!(
            stay_on_node(auto, dom, &plain, 0, &STICKY),
            "no replica: stay"
        );
        assert!(!stay_on_node(
            auto,
            FailoverScope::Replicated,
            &plain,
            0,
            &STICKY
        ));
        let domains = [
            node("a", Some("x")),
            node("b", Some("y")),
            node("c", Some("x")),
        ];
        assert!(
            !stay_on_node(auto, dom, &domains, 0, &STICKY),
            "c replicates a"
        );
        assert!(
            stay_on_node(auto, dom, &domains, 1, &STICKY),
            "b is alone in y"
        );
        domains[2].set_up(false, "test");
        assert!(
            stay_on_node(auto, dom, &domains, 0, &STICKY),
            "the replica is down: moving would lose the session"
        );
        assert!(
            !stay_on_node(auto, dom, &domains, 1, &Reason::New),
            "no session: moving is free"
        );
        let single = [node("a", None)];
        assert!(
            stay_on_node(auto, dom, &single, 0, &Reason::New),
            "no session but nowhere else to go: stay"
        );
        plain[1].set_up(false, "test");
        assert!(
            stay_on_node(auto, dom, &plain, 0, &Reason::New),
            "the only other node is down: stay"
        );
    }

    #[test]
    fn always_and_never_ignore_replication() {
        let plain = [node("a", None), node("b", None)];
        let rep = FailoverScope::Replicated;
        assert!(stay_on_node(
            RetrySameNode::Always,
            rep,
            &plain,
            0,
            &Reason::New
        ));
        assert!(!stay_on_node(RetrySameNode::Never, rep, &plain, 0, &STICKY));
    }
}

//! stickgate: a sticky, session-replicating HTTP load balancer for
//! Tomcat-style (`jvmRoute`) clusters.
//!
//! The balancer itself lives in the `stickgate-core` crate (`core/`),
//! re-exported here whole so `stickgate::config`, `stickgate::run` and the
//! rest keep their paths. This crate adds the tools the `stickgate` binary
//! ships beside it and that the core never uses: the [`demo`] node, the
//! failover [`drill`] and the mod_jk [`import`]. Keeping them out of the core
//! means a change to a tool cannot touch the request path.

#![forbid(unsafe_code)]

pub use stickgate_core::*;

pub mod demo;
pub mod drill;
pub mod import;

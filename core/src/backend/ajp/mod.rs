//! AJP/1.3 backends (`ajp://host:port`): Tomcat's `<Connector
//! protocol="AJP/1.3">`, spoken like mod_jk speaks it, so a site behind
//! Apache can move to stickgate without touching any node's server.xml.
//!
//! [`codec`] builds and reads the packets; [`client`] holds the pooled
//! connections, CPing/CPong, and the streaming exchange the attempt loop
//! uses. Everything else about a backend (routes, states, health,
//! stickiness, failover) is the same as for HTTP backends.

pub mod client;
pub mod codec;

pub use client::{AjpBody, AjpError, AjpPool};

pub use crate::config::ajp::{AjpOptions, PingModes};

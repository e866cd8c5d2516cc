//! Demo pieces for trying stickgate without a real Tomcat cluster: a small
//! backend node that issues and honours `jvmRoute`-suffixed session ids.
pub mod node;

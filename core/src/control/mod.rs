//! The control plane: everything that changes what the request path sees,
//! kept apart from it. [`reload`] re-reads the configuration (SIGHUP,
//! `POST /reload`), [`runtime`] builds the request path's `Runtime` and
//! reconciles it with the running one, [`states`] applies and shares
//! backend states, [`systemd`] tells the service manager how it goes,
//! [`takeover`] hands everything to a new binary, [`housekeeping`] gives
//! back memory nobody uses any more. The
//! request path (`proxy`) only reads the `Runtime` in force.

pub mod housekeeping;
pub mod reload;
mod runtime;
mod states;
pub mod systemd;
pub mod takeover;

//! A backend's administrative state: a plain value shared by the config
//! (`state = "draining"` in a `[[backend]]`), the backends, the session
//! stores that replicate operators' changes, and the admin API. It lives
//! here, depending on nothing, so none of those has to import another just
//! to name it.

/// Administrative state, as an operator (or the config) sets it; the
/// meanings follow mod_jk's activation so migrating operators keep theirs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdminState {
    /// Takes new and existing sessions (the default in the config).
    #[default]
    Active = 0,
    /// Rolling restarts: keeps serving its existing sessions until they end
    /// or expire, takes no new ones while an active backend can.
    Draining = 1,
    /// mod_jk's "disabled": only requests of sessions it already holds;
    /// never new sessions, never another node's orphans.
    Disabled = 2,
    /// mod_jk's "stopped": no traffic at all; its sessions fail over now.
    Stopped = 3,
}

impl AdminState {
    /// Every state, in code order.
    pub const ALL: [AdminState; 4] = [
        AdminState::Active,
        AdminState::Draining,
        AdminState::Disabled,
        AdminState::Stopped,
    ];

    /// The state with this code (`state as u8`, also the multicast wire
    /// number); `None` for a code this build does not know, so a peer's
    /// garbage is refused, never mapped to some other state.
    pub fn from_code(code: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|s| *s as u8 == code)
    }

    /// The state named `name` ([`AdminState::as_str`]).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == name)
    }

    /// The name used in the API, the config and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            AdminState::Active => "active",
            AdminState::Draining => "draining",
            AdminState::Disabled => "disabled",
            AdminState::Stopped => "stopped",
        }
    }

    /// The state an admin action (`enable`, `drain`, `disable`, `stop`)
    /// sets; `None` for an unknown action.
    pub fn from_action(action: &str) -> Option<Self> {
        Some(match action {
            "enable" => AdminState::Active,
            "drain" => AdminState::Draining,
            "disable" => AdminState::Disabled,
            "stop" => AdminState::Stopped,
            _ => return None,
        })
    }
}

impl std::fmt::Display for AdminState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

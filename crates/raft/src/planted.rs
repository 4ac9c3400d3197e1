//! Bugs planted on purpose, so the simulator can prove that its checks catch each one
//! (`worknode sim --inject-bug NAME`). A member outside simulation never sets one: no
//! setting, flag or file of the server reaches [`crate::NodeConfig::planted`].

use std::fmt;

/// One known bug. Some live in the driver (which consults [`crate::NodeConfig::planted`]),
/// the others in the simulated disk, which is where they happen in a real member.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PlantedBug {
    /// The log store reports a write durable before its sync: a crash loses entries the
    /// member acknowledged (simulated disk).
    AckBeforeSync,
    /// The state machine applies a retried request again instead of answering it from
    /// the deduplication window (driver).
    SkipDedup,
    /// A linearizable read is served from local state without a read index (driver).
    ReadWithoutReadIndex,
    /// A restarted member has forgotten its term and vote (simulated disk).
    ForgetHardState,
    /// The leader hands its turn over without the pre-transfer checks (a silent, lagging
    /// or snapshotting target is not skipped) (driver).
    UncheckedHandoff,
    /// The schedule's successor never takes over from a silent leader: the cluster waits
    /// out the election timeout, as plain Raft does (driver).
    NoTakeover,
}

impl PlantedBug {
    /// Every planted bug, in the order the simulator tries them.
    pub const ALL: [Self; 6] = [
        Self::AckBeforeSync,
        Self::SkipDedup,
        Self::ReadWithoutReadIndex,
        Self::ForgetHardState,
        Self::UncheckedHandoff,
        Self::NoTakeover,
    ];

    /// The name `--inject-bug` takes.
    pub fn name(self) -> &'static str {
        match self {
            Self::AckBeforeSync => "ack-before-sync",
            Self::SkipDedup => "skip-dedup",
            Self::ReadWithoutReadIndex => "read-without-read-index",
            Self::ForgetHardState => "forget-hard-state",
            Self::UncheckedHandoff => "unchecked-handoff",
            Self::NoTakeover => "no-takeover",
        }
    }
}

impl fmt::Display for PlantedBug {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for PlantedBug {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, String> {
        Self::ALL.into_iter().find(|bug| bug.name() == name).ok_or_else(|| {
            let names: Vec<&str> = Self::ALL.iter().map(|bug| bug.name()).collect();
            format!("unknown bug {name:?}; the planted bugs are {}", names.join(", "))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_parses_back_and_others_are_refused() {
        for bug in PlantedBug::ALL {
            assert_eq!(bug.name().parse::<PlantedBug>(), Ok(bug));
        }
        let error = "no-such-bug".parse::<PlantedBug>().unwrap_err();
        assert!(error.contains("ack-before-sync") && error.contains("no-such-bug"), "{error}");
    }
}

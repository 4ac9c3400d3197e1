//! A run's report in words (one line, more on failure) and as JSON (one object), and
//! the command that replays it.

use std::fmt::Write as _;

use serde_json::json;

use crate::world::clock::{MS, SECOND};
use crate::{Report, RunConfig};

/// `--duration` as the replay command writes it.
pub fn duration_text(nanos: u64) -> String {
    if nanos.is_multiple_of(SECOND) {
        format!("{}s", nanos / SECOND)
    } else {
        format!("{}ms", nanos / MS)
    }
}

/// Parses `--duration`: a whole number with `ms`, `s`, `m` or `h`.
pub fn parse_duration(text: &str) -> Result<u64, String> {
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().map_err(|_| {
        format!("--duration {text:?}: expected a whole number and a unit (ms, s, m, h)")
    })?;
    let unit_ns = match unit {
        "ms" => MS,
        "s" => SECOND,
        "m" => 60 * SECOND,
        "h" => 3_600 * SECOND,
        _ => return Err(format!("--duration {text:?}: the unit must be ms, s, m or h")),
    };
    let nanos =
        number.checked_mul(unit_ns).ok_or_else(|| format!("--duration {text:?}: too long"))?;
    if nanos < 2 * SECOND {
        return Err(format!(
            "--duration {text:?}: at least 2s (the cluster elects a leader first)"
        ));
    }
    Ok(nanos)
}

/// The one command that replays `config` exactly, with its trace.
pub fn replay_command(config: &RunConfig) -> String {
    let mut command = format!(
        "worknode sim --seed {} --members {} --duration {} --faults {} --rotation {}",
        config.seed,
        config.members,
        duration_text(config.duration),
        faults_text(config),
        if config.rotation { "on" } else { "off" }
    );
    if let Some(bug) = config.bug {
        let _ = write!(command, " --inject-bug {bug}");
    }
    command.push_str(" --trace");
    command
}

fn faults_text(config: &RunConfig) -> String {
    if config.faults.is_empty() {
        return "none".into();
    }
    if config.faults.len() == crate::faults::FaultKind::ALL.len() {
        return "all".into();
    }
    config.faults.iter().map(|kind| kind.name()).collect::<Vec<_>>().join(",")
}

impl Report {
    /// One line: the seed, pass or the failed check, and what the run did.
    pub fn line(&self) -> String {
        let verdict = match self.failure() {
            None => "ok".to_string(),
            Some((name, why)) => format!("FAILED {name}: {why}"),
        };
        let faults: u32 = self.faults.iter().map(|(_, n)| n).sum();
        format!(
            "seed {}: {verdict} · {:.0} s simulated in {:.2} s ({:.0}x) · {} ops ({} answered) · {faults} faults · {} leader changes · {} handoffs · {} takeovers · {} snapshots ({} sent) · trace {:016x}",
            self.config.seed,
            self.simulated_s,
            self.wall_s,
            self.speed(),
            self.operations,
            self.answered,
            self.leader_changes,
            self.handoffs,
            self.takeovers,
            self.snapshots.0,
            self.snapshots.1,
            self.trace_digest
        )
    }

    /// Simulated seconds per wall second.
    pub fn speed(&self) -> f64 {
        self.simulated_s / self.wall_s.max(1e-9)
    }

    /// For a failed run: the events before the failure and the replay command.
    pub fn failure_details(&self) -> String {
        let mut text = String::from("  the events before it:\n");
        for event in &self.recent {
            let _ = writeln!(text, "    {event}");
        }
        let _ = write!(text, "  replay: {}", replay_command(&self.config));
        text
    }

    /// One JSON object.
    pub fn json(&self) -> serde_json::Value {
        let faults: serde_json::Map<String, serde_json::Value> =
            self.faults.iter().map(|(kind, n)| (kind.name().to_string(), json!(n))).collect();
        let checks: serde_json::Map<String, serde_json::Value> = self
            .checks
            .iter()
            .map(|check| {
                let value = match &check.result {
                    Ok(detail) => json!({"ok": true, "detail": detail}),
                    Err(why) => json!({"ok": false, "detail": why}),
                };
                (check.name.to_string(), value)
            })
            .collect();
        json!({
            "seed": self.config.seed,
            "members": self.config.members,
            "ok": self.failure().is_none(),
            "simulated_s": self.simulated_s,
            "wall_s": self.wall_s,
            "operations": self.operations,
            "answered": self.answered,
            "faults": faults,
            "messages_lost": self.messages.0,
            "messages_duplicated": self.messages.1,
            "messages_cut": self.messages.2,
            "unsynced_writes_lost": self.lost_writes,
            "unsynced_writes_kept": self.kept_writes,
            "rejoins": self.rejoins,
            "leader_changes": self.leader_changes,
            "handoffs": self.handoffs,
            "takeovers": self.takeovers,
            "snapshots": self.snapshots.0,
            "snapshots_sent": self.snapshots.1,
            "checks": checks,
            "trace_digest": format!("{:016x}", self.trace_digest),
            "trace_events": self.trace_events,
            "inject_bug": self.config.bug.map(|bug| bug.name()),
            "replay": self.failure().map(|_| replay_command(&self.config)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_print_back() {
        assert_eq!(parse_duration("30s"), Ok(30 * SECOND));
        assert_eq!(parse_duration("2m"), Ok(120 * SECOND));
        assert_eq!(parse_duration("2500ms"), Ok(2_500 * MS));
        assert_eq!(duration_text(2_500 * MS), "2500ms");
        assert_eq!(duration_text(120 * SECOND), "120s");
        assert!(parse_duration("1s").unwrap_err().contains("at least 2s"));
        assert!(parse_duration("10x").unwrap_err().contains("unit"));
        assert!(parse_duration("s").unwrap_err().contains("whole number"));
    }
}

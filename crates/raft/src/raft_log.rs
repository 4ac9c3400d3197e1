//! raft-rs logs through slog; this drain hands its records to `tracing` under the target
//! `raft`, so one filter (`WORKNODE_LOG`) governs both. raft-rs reports routine state
//! changes (became leader, started an election, a transfer) at its info level: here they
//! are debug events, because with scheduled leadership they happen every turn. Its
//! warnings and errors keep their level. `WORKNODE_LOG=info,raft=debug` shows a member's
//! elections and transfers as raft-rs saw them.

use std::fmt::Write as _;

/// The logger a node gives raft-rs.
pub(crate) fn logger() -> slog::Logger {
    slog::Logger::root(TracingDrain, slog::o!())
}

struct TracingDrain;

impl slog::Drain for TracingDrain {
    type Ok = ();
    type Err = slog::Never;

    fn log(
        &self,
        record: &slog::Record<'_>,
        values: &slog::OwnedKVList,
    ) -> Result<(), slog::Never> {
        let enabled = match record.level() {
            slog::Level::Critical | slog::Level::Error => {
                tracing::enabled!(target: "raft", tracing::Level::ERROR)
            }
            slog::Level::Warning => tracing::enabled!(target: "raft", tracing::Level::WARN),
            slog::Level::Info => tracing::enabled!(target: "raft", tracing::Level::DEBUG),
            slog::Level::Debug | slog::Level::Trace => {
                tracing::enabled!(target: "raft", tracing::Level::TRACE)
            }
        };
        if !enabled {
            // Formatting is the cost; a filtered record pays none of it.
            return Ok(());
        }
        let mut line = record.msg().to_string();
        let mut fields = Fields(&mut line);
        let _ = slog::KV::serialize(&record.kv(), record, &mut fields);
        let _ = slog::KV::serialize(values, record, &mut fields);
        match record.level() {
            slog::Level::Critical | slog::Level::Error => tracing::error!(target: "raft", "{line}"),
            slog::Level::Warning => tracing::warn!(target: "raft", "{line}"),
            slog::Level::Info => tracing::debug!(target: "raft", "{line}"),
            slog::Level::Debug | slog::Level::Trace => tracing::trace!(target: "raft", "{line}"),
        }
        Ok(())
    }
}

/// A record's key-value pairs appended to its message as ` key=value`.
struct Fields<'a>(&'a mut String);

impl slog::Serializer for Fields<'_> {
    fn emit_arguments(&mut self, key: slog::Key, value: &std::fmt::Arguments<'_>) -> slog::Result {
        let _ = write!(self.0, " {key}={value}");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::layer::SubscriberExt as _;

    /// Collects formatted events (target, level, message) for the test to read.
    #[derive(Clone, Default)]
    struct Collected(Arc<Mutex<Vec<(String, tracing::Level, String)>>>);

    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Collected {
        fn on_event(
            &self,
            event: &tracing::Event<'_>,
            _: tracing_subscriber::layer::Context<'_, S>,
        ) {
            struct Message(String);
            impl tracing::field::Visit for Message {
                fn record_debug(
                    &mut self,
                    field: &tracing::field::Field,
                    value: &dyn std::fmt::Debug,
                ) {
                    if field.name() == "message" {
                        self.0 = format!("{value:?}");
                    }
                }
            }
            let mut message = Message(String::new());
            event.record(&mut message);
            let meta = event.metadata();
            self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push((
                meta.target().to_owned(),
                *meta.level(),
                message.0,
            ));
        }
    }

    fn events_of(
        filter: &str,
        log: impl FnOnce(&slog::Logger),
    ) -> Vec<(String, tracing::Level, String)> {
        let collected = Collected::default();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_subscriber::EnvFilter::new(filter))
            .with(collected.clone());
        tracing::subscriber::with_default(subscriber, || log(&super::logger()));
        let events = collected.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        events
    }

    #[test]
    fn raft_records_become_tracing_events_with_their_fields() {
        let events = events_of("raft=debug", |logger| {
            let logger = logger.new(slog::o!("raft_id" => 2));
            slog::info!(logger, "became leader at term 7"; "term" => 7);
            slog::warn!(logger, "attempted to restore snapshot"; "state" => "Leader");
            slog::debug!(logger, "sent a heartbeat");
        });
        assert_eq!(
            events,
            vec![
                (
                    "raft".to_owned(),
                    tracing::Level::DEBUG,
                    "became leader at term 7 term=7 raft_id=2".to_owned()
                ),
                (
                    "raft".to_owned(),
                    tracing::Level::WARN,
                    "attempted to restore snapshot state=Leader raft_id=2".to_owned()
                ),
            ]
        );
    }

    #[test]
    fn routine_state_changes_stay_out_of_an_info_log() {
        let events = events_of("info", |logger| {
            slog::info!(logger, "became follower at term 3");
            slog::error!(logger, "invalid confchange"; "error" => "bad");
        });
        assert_eq!(
            events,
            vec![(
                "raft".to_owned(),
                tracing::Level::ERROR,
                "invalid confchange error=bad".to_owned()
            )]
        );
    }
}

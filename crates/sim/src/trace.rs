//! The run's trace: every event folded into one 64-bit digest (equal digests, equal runs),
//! the latest events kept in words for a failure report, and all of them printed with
//! `--trace`.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::fmt::{self, Write as _};

use crate::world::clock::Nanos;
use crate::world::net::Envelope;

/// Events kept in words for a failure report.
pub const RECENT: usize = 40;

/// The trace of one run.
#[derive(Debug)]
pub struct Trace {
    digest: u64,
    /// Events so far (messages and loop turns included).
    pub events: u64,
    recent: VecDeque<String>,
    print: bool,
    print_messages: bool,
    line: String,
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

impl Trace {
    /// An empty trace; `print` writes every worded event to stdout as it happens, and
    /// `print_messages` every message delivered.
    pub fn new(print: bool, print_messages: bool) -> Self {
        Self {
            digest: FNV_OFFSET,
            events: 0,
            recent: VecDeque::new(),
            print,
            print_messages,
            line: String::new(),
        }
    }

    fn fold(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.digest = (self.digest ^ u64::from(*byte)).wrapping_mul(FNV_PRIME);
        }
        self.events += 1;
    }

    fn fold_numbers(&mut self, numbers: &[u64]) {
        for number in numbers {
            self.fold(&number.to_le_bytes());
        }
    }

    /// An event worth words: a fault, a call, an answer, a leader.
    pub fn event(&mut self, at: Nanos, what: fmt::Arguments<'_>) {
        self.line.clear();
        let _ = write!(self.line, "{:>10.3} ms  {what}", at as f64 / 1e6);
        let line = std::mem::take(&mut self.line);
        self.fold(line.as_bytes());
        if self.print {
            println!("{line}");
        }
        if self.recent.len() == RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back(line);
    }

    /// A message delivered.
    pub fn message(&mut self, at: Nanos, envelope: &Envelope) {
        let m = &envelope.message;
        self.fold_numbers(&[
            at,
            envelope.from,
            m.to,
            m.get_msg_type() as u64,
            m.term,
            m.index,
            m.commit,
        ]);
        if self.print_messages {
            let reject =
                if m.reject { format!(" reject hint {}", m.reject_hint) } else { String::new() };
            println!(
                "{:>10.3} ms    {} -> {} {:?} term {} index {} log_term {} commit {} entries {}{reject}",
                at as f64 / 1e6,
                envelope.from,
                m.to,
                m.get_msg_type(),
                m.term,
                m.index,
                m.log_term,
                m.commit,
                m.entries.len(),
            );
        }
    }

    /// A loop turn of a member.
    pub fn poll(&mut self, member: u64, at: Nanos) {
        self.fold_numbers(&[member, at]);
    }

    /// The digest of everything so far.
    pub fn digest(&self) -> u64 {
        self.digest
    }

    /// The latest worded events, oldest first.
    pub fn recent(&self) -> Vec<String> {
        self.recent.iter().cloned().collect()
    }
}

thread_local! {
    static LAST_PANIC: RefCell<String> = const { RefCell::new(String::new()) };
    static IN_MEMBER: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Panics inside a simulated member are failures the run reports with its seed: keep
/// their message (per thread: seeds run on several) for the report instead of printing it
/// where it happens. Any other panic (the simulator's own) prints as usual.
pub fn catch_panics_quietly() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if IN_MEMBER.with(std::cell::Cell::get) {
            LAST_PANIC.with(|last| *last.borrow_mut() = info.to_string());
        } else {
            default(info);
        }
    }));
}

/// Runs `f` as a member's code: a panic in it is caught and kept for the report.
pub fn as_member<R>(f: impl FnOnce() -> R) -> std::thread::Result<R> {
    IN_MEMBER.with(|flag| flag.set(true));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    IN_MEMBER.with(|flag| flag.set(false));
    result
}

/// The message of this thread's latest panic.
pub fn last_panic() -> String {
    LAST_PANIC.with(|last| last.borrow().clone())
}

//! How the Raft loop sleeps and how its producers wake it.
//!
//! The loop's inputs (peer messages, client requests, finished log reads) arrive in
//! bounded queues that only the loop takes from, and the loop never blocks on any one of
//! them. When every queue is empty it parks its thread, and a producer that queued
//! something unparks it: an atomic swap, plus a futex wake only when the loop actually
//! sleeps.
//!
//! A `select` over several channels, as the loop used before, registers the sleeping
//! thread with every channel and unregisters it from all of them on waking, each under
//! that channel's lock, while the producer still holds the lock it woke the loop under.
//! On two vCPUs the woken loop found that lock taken most of the time and slept again
//! (a second futex round trip) on every message from a peer.
//!
//! No wake-up is lost: the loop empties the queues before it parks, and an unpark that
//! comes between the two makes the park return at once.

use std::sync::{Arc, OnceLock};
use std::thread::Thread;
use std::time::Duration;

use crossbeam_channel::{Sender, TrySendError};

/// The Raft loop's thread, once it runs; what its producers ring.
#[derive(Debug, Default)]
pub struct Doorbell {
    loop_thread: OnceLock<Thread>,
}

impl Doorbell {
    /// Binds the bell to the calling thread, the one that will [`Doorbell::wait`].
    pub(crate) fn answer_here(&self) {
        let _ = self.loop_thread.set(std::thread::current());
    }

    /// Wakes the loop if it sleeps, or makes its next wait return at once. Before the loop
    /// runs this does nothing: the loop looks at its queues before it first waits.
    pub fn ring(&self) {
        if let Some(thread) = self.loop_thread.get() {
            thread.unpark();
        }
    }

    /// Sleeps until rung or for `timeout` (it may also return early, spuriously).
    pub(crate) fn wait(timeout: Duration) {
        if !timeout.is_zero() {
            std::thread::park_timeout(timeout);
        }
    }
}

/// A producer's side of one of the loop's queues: a successful send rings the bell.
#[derive(Debug)]
pub struct LoopSender<T> {
    queue: Sender<T>,
    bell: Arc<Doorbell>,
}

impl<T> Clone for LoopSender<T> {
    fn clone(&self) -> Self {
        Self { queue: self.queue.clone(), bell: Arc::clone(&self.bell) }
    }
}

impl<T> LoopSender<T> {
    /// `queue`'s sending side, ringing `bell`.
    pub fn new(queue: Sender<T>, bell: Arc<Doorbell>) -> Self {
        Self { queue, bell }
    }

    /// Queues `value` without blocking and wakes the loop; the queue's error at its bound
    /// or once the loop is gone.
    pub fn try_send(&self, value: T) -> Result<(), TrySendError<T>> {
        self.queue.try_send(value)?;
        self.bell.ring();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    #[test]
    fn a_send_wakes_the_waiting_thread_long_before_its_timeout() {
        let bell = Arc::new(Doorbell::default());
        let (tx, rx) = crossbeam_channel::bounded(4);
        let sender = LoopSender::new(tx, Arc::clone(&bell));
        let (bound_tx, bound_rx) = crossbeam_channel::bounded(1);
        let waiter = std::thread::spawn(move || {
            bell.answer_here();
            bound_tx.send(()).unwrap();
            let started = Instant::now();
            let mut got = None;
            while got.is_none() && started.elapsed() < Duration::from_secs(60) {
                got = rx.try_recv().ok();
                if got.is_none() {
                    Doorbell::wait(Duration::from_secs(30));
                }
            }
            (got, started.elapsed())
        });
        bound_rx.recv().unwrap();
        std::thread::sleep(Duration::from_millis(20));
        sender.try_send(7_u32).unwrap();
        let (got, waited) = waiter.join().unwrap();
        assert_eq!(got, Some(7));
        assert!(waited < Duration::from_secs(30), "woken by the send, not the timeout");
    }

    #[test]
    fn a_ring_before_the_wait_is_not_lost() {
        let bell = Doorbell::default();
        bell.answer_here();
        bell.ring();
        let started = Instant::now();
        Doorbell::wait(Duration::from_secs(30));
        assert!(started.elapsed() < Duration::from_secs(30));
    }

    #[test]
    fn a_full_queue_reports_full_and_a_gone_loop_disconnected() {
        let (tx, rx) = crossbeam_channel::bounded(1);
        let sender = LoopSender::new(tx, Arc::new(Doorbell::default()));
        sender.try_send(1_u8).unwrap();
        assert!(matches!(sender.try_send(2), Err(TrySendError::Full(2))));
        drop(rx);
        assert!(matches!(sender.try_send(3), Err(TrySendError::Disconnected(3))));
    }
}

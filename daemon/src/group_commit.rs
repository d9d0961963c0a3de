//! Group commit: concurrent writers of an append-only file share one sync.
//!
//! The audit log uses it so that a burst of issuances pays for one `fsync`
//! instead of one each, while every writer still returns only once its own
//! write is durable.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

/// Group commit: many writers share one expensive sync (an `fsync`) instead
/// of paying for one each.
///
/// Protocol: a writer finishes its write, then takes a [`ticket`], then calls
/// [`durable`]. Because tickets are taken only after the write, every ticket
/// at or below the current maximum belongs to a completed write, so a leader
/// that notes that maximum before syncing covers all of them.
///
/// Once a sync has failed, every ticket it covered gets the error, even if a
/// later sync succeeds: after a failed `fsync` the kernel may have dropped
/// the dirty pages, so a later success proves nothing about them.
///
/// [`ticket`]: GroupCommit::ticket
/// [`durable`]: GroupCommit::durable
pub(crate) struct GroupCommit<E> {
    issued: AtomicU64,
    rounds: Mutex<Rounds<E>>,
    finished: Condvar,
}

struct Rounds<E> {
    /// Highest ticket included in a finished sync round, failed or not.
    covered: u64,
    leader_active: bool,
    /// Failed rounds whose writers have not all collected the error yet.
    failures: Vec<FailedRound<E>>,
}

struct FailedRound<E> {
    /// Tickets in `(after, upto]` were covered by this round.
    after: u64,
    upto: u64,
    unclaimed: u64,
    error: E,
}

impl<E: Clone> GroupCommit<E> {
    /// A group commit with no writes yet.
    pub(crate) fn new() -> Self {
        Self {
            issued: AtomicU64::new(0),
            rounds: Mutex::new(Rounds {
                covered: 0,
                leader_active: false,
                failures: Vec::new(),
            }),
            finished: Condvar::new(),
        }
    }

    /// Takes a ticket for a write that has already completed.
    pub(crate) fn ticket(&self) -> u64 {
        self.issued.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Returns once the write behind `ticket` is durable, running `sync`
    /// itself if no other writer is already doing so.
    ///
    /// `sync` must not panic: a panicking leader would leave the round open
    /// forever (certd's release profile aborts on panic anyway).
    pub(crate) fn durable(
        &self,
        ticket: u64,
        sync: impl FnOnce() -> Result<(), E>,
    ) -> Result<(), E> {
        let mut rounds = self.lock();
        loop {
            if let Some(error) = Self::claim_failure(&mut rounds, ticket) {
                return Err(error);
            }
            if ticket <= rounds.covered {
                return Ok(());
            }
            if !rounds.leader_active {
                break;
            }
            rounds = self
                .finished
                .wait(rounds)
                .unwrap_or_else(PoisonError::into_inner);
        }

        rounds.leader_active = true;
        let after = rounds.covered;
        let upto = self.issued.load(Ordering::SeqCst);
        debug_assert!(
            ticket <= upto,
            "durable() called with a ticket never issued"
        );
        drop(rounds);
        let result = sync();
        let mut rounds = self.lock();
        rounds.leader_active = false;
        rounds.covered = rounds.covered.max(upto);
        if let Err(error) = result {
            rounds.failures.push(FailedRound {
                after,
                upto,
                unclaimed: upto.saturating_sub(after),
                error,
            });
        }
        self.finished.notify_all();
        // Our own ticket is in `(after, upto]`, so this finds the failure
        // just recorded, if any.
        match Self::claim_failure(&mut rounds, ticket) {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }

    fn claim_failure(rounds: &mut Rounds<E>, ticket: u64) -> Option<E> {
        let index = rounds
            .failures
            .iter()
            .position(|f| f.after < ticket && ticket <= f.upto)?;
        let failure = &mut rounds.failures[index];
        let error = failure.error.clone();
        failure.unclaimed = failure.unclaimed.saturating_sub(1);
        if failure.unclaimed == 0 {
            rounds.failures.swap_remove(index);
        }
        Some(error)
    }

    fn lock(&self) -> MutexGuard<'_, Rounds<E>> {
        // The state is only changed by plain assignments that cannot panic
        // halfway, so a poisoned lock still guards consistent data.
        self.rounds.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::sync::Arc;
    use std::time::Duration;

    /// Bounds the waits of the threaded test, so a broken protocol fails it
    /// instead of hanging it.
    const HANG: Duration = Duration::from_secs(30);

    #[test]
    fn failed_round_is_reported_to_all_its_writers() {
        let commit = GroupCommit::<String>::new();
        // One failing round covering tickets 1..=3, taken before any sync.
        let tickets: Vec<u64> = (0..3).map(|_| commit.ticket()).collect();
        let results: Vec<_> = tickets
            .iter()
            .map(|t| commit.durable(*t, || Err("disk full".to_owned())))
            .collect();
        assert_eq!(results, vec![Err("disk full".to_owned()); 3]);
        // Every writer of the round has its error: nothing is kept.
        assert!(commit.lock().failures.is_empty());

        // A later successful round does not whitewash anything and works.
        let ticket = commit.ticket();
        assert_eq!(commit.durable(ticket, || Ok(())), Ok(()));
    }

    #[test]
    fn writes_completed_before_a_round_share_its_sync() {
        let commit = GroupCommit::<String>::new();
        let mut syncs = 0;
        let tickets: Vec<u64> = (0..3).map(|_| commit.ticket()).collect();
        for ticket in tickets {
            commit
                .durable(ticket, || {
                    syncs += 1;
                    Ok(())
                })
                .expect("durable");
        }
        assert_eq!(syncs, 1);
        assert_eq!(commit.lock().covered, 3);
    }

    /// While a leader syncs, writers that arrive queue behind it; once it is
    /// done, one of them syncs for all of them: exactly two syncs, and every
    /// ticket covered.
    #[test]
    fn writers_queued_behind_a_sync_share_the_next_one() {
        const WRITERS: u64 = 8;
        let commit = Arc::new(GroupCommit::<String>::new());
        let syncs = Arc::new(AtomicU64::new(0));
        let (started_tx, started) = mpsc::channel();
        let (release, release_rx) = mpsc::channel::<()>();

        let leader = {
            let (commit, syncs) = (Arc::clone(&commit), Arc::clone(&syncs));
            std::thread::spawn(move || {
                let ticket = commit.ticket();
                commit.durable(ticket, || {
                    syncs.fetch_add(1, Ordering::SeqCst);
                    started_tx.send(()).expect("announce the sync");
                    // Holds the round open until the writers have queued.
                    release_rx.recv_timeout(HANG).expect("released");
                    Ok(())
                })
            })
        };
        started.recv_timeout(HANG).expect("the leader syncs");

        let (queued_tx, queued) = mpsc::channel();
        let writers: Vec<_> = (0..WRITERS)
            .map(|_| {
                let (commit, syncs) = (Arc::clone(&commit), Arc::clone(&syncs));
                let queued_tx = queued_tx.clone();
                std::thread::spawn(move || {
                    let ticket = commit.ticket();
                    queued_tx.send(ticket).expect("announce the ticket");
                    commit.durable(ticket, || {
                        syncs.fetch_add(1, Ordering::SeqCst);
                        Ok(())
                    })
                })
            })
            .collect();
        let mut tickets: Vec<u64> = (0..WRITERS)
            .map(|_| queued.recv_timeout(HANG).expect("a writer's ticket"))
            .collect();
        tickets.sort_unstable();
        assert_eq!(tickets, (2..=WRITERS + 1).collect::<Vec<_>>());
        // Every writer has its ticket while the first round is still open.
        assert_eq!(syncs.load(Ordering::SeqCst), 1);
        assert_eq!(commit.lock().covered, 0);

        release.send(()).expect("release the leader");
        assert_eq!(leader.join().expect("leader"), Ok(()));
        for writer in writers {
            assert_eq!(writer.join().expect("writer"), Ok(()));
        }
        assert_eq!(syncs.load(Ordering::SeqCst), 2);
        assert_eq!(commit.lock().covered, WRITERS + 1);
    }
}

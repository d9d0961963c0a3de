//! Threads that sign, so that waiting for a token never holds one of the
//! async runtime's few workers: an issuance hands its TBSCertificate to the
//! pool and awaits the checked signature. The pool has as many threads as
//! the token has signing sessions (`hsm.sessions`), so it never asks the
//! token for more than it can do at once.

use super::{sign_checked, HsmError, Signer};
use std::sync::{mpsc, Arc, Mutex, PoisonError};

type Signed = Result<Vec<u8>, HsmError>;

struct Job {
    signer: Arc<dyn Signer + Send + Sync>,
    message: Vec<u8>,
    reply: tokio::sync::oneshot::Sender<Signed>,
}

/// A fixed set of signing threads sharing one queue.
pub struct SigningPool {
    tx: Mutex<Option<mpsc::Sender<Job>>>,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
}

impl std::fmt::Debug for SigningPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningPool").finish_non_exhaustive()
    }
}

impl SigningPool {
    /// `threads` signing threads (at least one).
    pub fn new(threads: usize) -> std::io::Result<SigningPool> {
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        let mut handles = Vec::new();
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            handles.push(
                std::thread::Builder::new()
                    .name(format!("sign-{i}"))
                    .spawn(move || loop {
                        // One thread waits on the queue at a time; the others
                        // wait for the lock, which is what a shared queue is.
                        let job = rx.lock().unwrap_or_else(PoisonError::into_inner).recv();
                        let Ok(job) = job else { return };
                        let signed = sign_checked(job.signer.as_ref(), &job.message);
                        // A caller that went away no longer needs it.
                        let _ = job.reply.send(signed);
                    })?,
            );
        }
        Ok(SigningPool {
            tx: Mutex::new(Some(tx)),
            threads: Mutex::new(handles),
        })
    }

    /// Signs `message` with `signer` on a pool thread and verifies the
    /// signature before returning it ([`sign_checked`]).
    pub async fn sign(&self, signer: Arc<dyn Signer + Send + Sync>, message: Vec<u8>) -> Signed {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let stopped = || HsmError::Unavailable("the signing threads have stopped".into());
        {
            let guard = self.tx.lock().unwrap_or_else(PoisonError::into_inner);
            guard
                .as_ref()
                .ok_or_else(stopped)?
                .send(Job {
                    signer,
                    message,
                    reply,
                })
                .map_err(|_| stopped())?;
        }
        answer.await.map_err(|_| stopped())?
    }
}

impl Drop for SigningPool {
    fn drop(&mut self) {
        self.tx
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        for t in self
            .threads
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain(..)
        {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hsm::memory::MemoryKey;

    #[tokio::test]
    async fn signatures_come_back_checked_from_the_pool() {
        let pool = SigningPool::new(2).expect("pool");
        let key: Arc<dyn Signer + Send + Sync> = Arc::new(MemoryKey::p256([0x11; 32]));
        let mut waits = Vec::new();
        for i in 0..8u8 {
            waits.push(pool.sign(key.clone(), vec![i; 100]));
        }
        for (i, w) in waits.into_iter().enumerate() {
            let sig = w.await.expect("signed");
            crate::hsm::verify::verify(key.public_key(), key.key_type(), &[i as u8; 100], &sig)
                .expect("a signature of that message");
        }
    }
}

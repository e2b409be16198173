//! Password hashing with argon2id, off the async threads, with a bounded number in flight.
//!
//! One hash costs ~30 ms of CPU and ~19 MiB of memory, so an unbounded burst of logins
//! could exhaust the machine: a semaphore admits `auth.max_concurrent_hashes` at a time and
//! the rest wait up to `auth.hash_queue_timeout_secs`, then get 503.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::Argon2;
use tokio::sync::Semaphore;

use crate::error::ApiError;

/// Shortest password accepted (PROTOCOL.md §2).
pub const MIN_PASSWORD_CHARS: usize = 8;
/// Longest password accepted: bounds the work one request can ask for.
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// Counts hashes in flight, for tests and metrics.
#[derive(Debug, Default)]
pub struct HashStats {
    in_flight: AtomicUsize,
    peak: AtomicUsize,
    total: AtomicUsize,
}

impl HashStats {
    /// Most hashes that ever ran at once.
    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::Relaxed)
    }
    /// Hashes computed so far.
    pub fn total(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }
}

/// Hashes and verifies passwords under the concurrency bound.
#[derive(Clone)]
pub struct Passwords {
    permits: Arc<Semaphore>,
    queue_timeout: Duration,
    /// A real hash of a random password: verifying against it when an email is unknown
    /// makes that answer cost the same as a wrong password.
    decoy: Arc<str>,
    stats: Arc<HashStats>,
}

impl Passwords {
    /// A hasher admitting `max_concurrent` hashes at once.
    pub fn new(max_concurrent: usize, queue_timeout: Duration) -> Self {
        let decoy_password = crate::auth::opaque::mint("decoy_").secret;
        // unwrap: hashing with default parameters and an OS-random salt does not fail.
        let decoy = hash_now(&decoy_password).unwrap();
        Self {
            permits: Arc::new(Semaphore::new(max_concurrent)),
            queue_timeout,
            decoy: decoy.into(),
            stats: Arc::default(),
        }
    }

    /// Live counters.
    pub fn stats(&self) -> Arc<HashStats> {
        Arc::clone(&self.stats)
    }

    /// An argon2id PHC string for `password`.
    pub async fn hash(&self, password: String) -> Result<String, ApiError> {
        self.bounded(move || hash_now(&password).map_err(ApiError::internal))
            .await
    }

    /// Whether `password` matches `stored`. With `None` (unknown user) it verifies against
    /// the decoy and answers false, taking the same time as a real mismatch.
    pub async fn verify(&self, password: String, stored: Option<String>) -> Result<bool, ApiError> {
        let known = stored.is_some();
        let hash = stored.unwrap_or_else(|| self.decoy.to_string());
        let matched = self
            .bounded(move || {
                let parsed = PasswordHash::new(&hash).map_err(ApiError::internal)?;
                Ok(Argon2::default()
                    .verify_password(password.as_bytes(), &parsed)
                    .is_ok())
            })
            .await?;
        Ok(known && matched)
    }

    async fn bounded<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let permit = tokio::time::timeout(self.queue_timeout, self.permits.acquire())
            .await
            .map_err(|_| ApiError::Unavailable("the server is busy; try again shortly"))?
            .map_err(ApiError::internal)?;
        let stats = Arc::clone(&self.stats);
        let result = actix_web::web::block(move || {
            let now = stats.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            stats.peak.fetch_max(now, Ordering::SeqCst);
            let started = std::time::Instant::now();
            let result = work();
            crate::metrics::METRICS.hash_time(started.elapsed());
            stats.in_flight.fetch_sub(1, Ordering::SeqCst);
            stats.total.fetch_add(1, Ordering::Relaxed);
            result
        })
        .await
        .map_err(ApiError::internal)?;
        drop(permit);
        result
    }
}

/// An argon2id PHC string for `password`, on this thread (the admin commands; the relay
/// goes through [`Passwords::hash`]).
pub fn hash_now(password: &str) -> Result<String, argon2::password_hash::Error> {
    Ok(Argon2::default()
        .hash_password(password.as_bytes())?
        .to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[actix_rt::test]
    async fn a_hash_verifies_its_password_only() {
        let passwords = Passwords::new(2, Duration::from_secs(5));
        let hash = passwords.hash("correct horse".into()).await.unwrap();
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        assert!(passwords
            .verify("correct horse".into(), Some(hash.clone()))
            .await
            .unwrap());
        assert!(!passwords
            .verify("wrong horse".into(), Some(hash))
            .await
            .unwrap());
    }

    #[actix_rt::test]
    async fn an_unknown_user_never_verifies() {
        let passwords = Passwords::new(2, Duration::from_secs(5));
        assert!(!passwords.verify("anything".into(), None).await.unwrap());
    }
}

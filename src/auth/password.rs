//! Passwords: argon2id hashes computed on the [`HashPool`], and the rules a new password
//! must meet.
//!
//! One hash costs ~30 ms of CPU and 19 MiB of memory, so hashing happens only on the pool's
//! `auth.max_concurrent_hashes` threads, each reusing its own memory.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::{Arc, LazyLock};

use argon2::password_hash::phc::{Output, ParamsString, PasswordHash, Salt};
use argon2::{Algorithm, Argon2, Params, Version};

use super::hashing::{HashPool, Memory};
use crate::config::AuthSettings;
use crate::error::ApiError;

pub use super::hashing::HashStats;

/// Shortest password accepted (PROTOCOL.md §2).
pub const MIN_PASSWORD_CHARS: usize = 8;
/// Longest password accepted: bounds the work one request can ask for.
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// The most common passwords of 8 characters or more, in lower case.
static COMMON: LazyLock<HashSet<&'static str>> = LazyLock::new(|| {
    include_str!("common_passwords.txt")
        .lines()
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .collect()
});

/// Whether `password` may be chosen for an account; if not, the text of the 400 answer.
/// Refused: too short or too long, any control character (NUL included), only
/// whitespace, one character repeated, or one of the 10,000 most common passwords (in any
/// case, ignoring surrounding spaces). Logins are never checked against these rules: an
/// existing password keeps working.
pub fn check_new(password: &str) -> Result<(), String> {
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(format!(
            "Password must be at least {MIN_PASSWORD_CHARS} characters"
        ));
    }
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(format!(
            "Password must be at most {MAX_PASSWORD_BYTES} bytes"
        ));
    }
    if password.chars().any(char::is_control) {
        return Err("Password must not contain control characters".into());
    }
    if password.chars().all(char::is_whitespace) {
        return Err("Password must not be only spaces".into());
    }
    let mut chars = password.chars();
    let first = chars.next();
    if chars.all(|c| Some(c) == first) {
        return Err("Password must not be one character repeated".into());
    }
    if COMMON.contains(password.trim().to_lowercase().as_str()) {
        return Err(
            "This password is one of the most common ones and easy to guess; choose another".into(),
        );
    }
    Ok(())
}

/// Hashes and verifies passwords on the hashing pool.
#[derive(Clone)]
pub struct Passwords {
    pool: Arc<HashPool>,
    /// A real hash of a random password: verifying against it when an email is unknown
    /// makes that answer cost the same as a wrong password.
    decoy: Arc<str>,
}

impl Passwords {
    /// The pool of `[auth]`, and a fresh decoy hash.
    pub fn new(settings: &AuthSettings) -> Self {
        let decoy_password = crate::auth::opaque::mint("decoy_").secret;
        // unwrap: hashing with default parameters and an OS-random salt does not fail.
        let decoy = hash_with(&mut Memory::default(), decoy_password.as_bytes()).unwrap();
        Self {
            pool: Arc::new(HashPool::new(settings)),
            decoy: decoy.into(),
        }
    }

    /// Live counters.
    pub fn stats(&self) -> Arc<HashStats> {
        self.pool.stats()
    }

    /// An argon2id PHC string for `password`, hashed in `from`'s turn.
    pub async fn hash(&self, from: IpAddr, password: String) -> Result<String, ApiError> {
        self.pool
            .run(from, move |memory| hash_with(memory, password.as_bytes()))
            .await
            .map_err(busy)?
            .map_err(ApiError::internal)
    }

    /// Whether `password` matches `stored`. With `None` (unknown user) it verifies against
    /// the decoy and answers false, taking the same time as a real mismatch.
    pub async fn verify(
        &self,
        from: IpAddr,
        password: String,
        stored: Option<String>,
    ) -> Result<bool, ApiError> {
        let known = stored.is_some();
        let hash = stored.unwrap_or_else(|| self.decoy.to_string());
        let matched = self
            .pool
            .run(from, move |memory| {
                verify_with(memory, password.as_bytes(), &hash)
            })
            .await
            .map_err(busy)?
            .map_err(ApiError::internal)?;
        Ok(known && matched)
    }
}

fn busy(_: super::hashing::Busy) -> ApiError {
    ApiError::Unavailable("the server is busy; try again shortly")
}

/// Why a stored hash could not be checked.
#[derive(Debug, thiserror::Error)]
pub enum HashError {
    /// Not a PHC string of argon2.
    #[error("stored password hash is malformed: {0}")]
    Malformed(String),
    /// Parameters beyond ours: refusing them bounds the memory one hash may take.
    #[error("stored password hash asks for more memory than the relay uses")]
    TooCostly,
    /// argon2 refused its inputs.
    #[error("argon2: {0}")]
    Argon2(#[from] argon2::Error),
}

fn malformed(err: impl std::fmt::Display) -> HashError {
    HashError::Malformed(err.to_string())
}

/// argon2id with default parameters and a random salt, in `memory`, as a PHC string.
pub fn hash_with(memory: &mut Memory, password: &[u8]) -> Result<String, HashError> {
    let params = Params::DEFAULT;
    let salt = Salt::generate();
    let mut out = [0u8; Params::DEFAULT_OUTPUT_LEN];
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone())
        .hash_password_into_with_memory(
            password,
            salt.as_ref(),
            &mut out,
            memory.blocks(params.block_count()),
        )?;
    let phc = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(&params).map_err(malformed)?,
        salt: Some(salt),
        hash: Some(Output::new(&out).map_err(malformed)?),
    };
    Ok(phc.to_string())
}

/// Whether `password` hashes to the PHC string `stored`, computed in `memory`.
pub fn verify_with(memory: &mut Memory, password: &[u8], stored: &str) -> Result<bool, HashError> {
    let phc = PasswordHash::new(stored).map_err(malformed)?;
    let algorithm = Algorithm::try_from(phc.algorithm.as_ref()).map_err(malformed)?;
    let version = Version::try_from(phc.version.unwrap_or(Version::V0x13.into()))?;
    let params = Params::try_from(&phc).map_err(malformed)?;
    if params.block_count() > Params::DEFAULT.block_count() || params.p_cost() > 1 {
        return Err(HashError::TooCostly);
    }
    let (Some(salt), Some(expected)) = (&phc.salt, &phc.hash) else {
        return Err(HashError::Malformed("no salt or hash".into()));
    };
    let mut out = vec![0u8; expected.len()];
    Argon2::new(algorithm, version, params.clone()).hash_password_into_with_memory(
        password,
        salt.as_ref(),
        &mut out,
        memory.blocks(params.block_count()),
    )?;
    // `Output`'s equality is constant-time.
    Ok(Output::new(&out).map_err(malformed)? == *expected)
}

/// An argon2id PHC string for `password`, on this thread (the admin commands; the relay
/// goes through [`Passwords::hash`]).
pub fn hash_now(password: &str) -> Result<String, HashError> {
    hash_with(&mut Memory::default(), password.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use argon2::password_hash::{PasswordHasher, PasswordVerifier};

    fn passwords() -> Passwords {
        let mut settings = crate::config::Settings::defaults().auth;
        settings.max_concurrent_hashes = 2;
        Passwords::new(&settings)
    }

    fn here() -> IpAddr {
        IpAddr::from([127, 0, 0, 1])
    }

    #[actix_rt::test]
    async fn a_hash_verifies_its_password_only() {
        let passwords = passwords();
        let hash = passwords
            .hash(here(), "correct horse".into())
            .await
            .unwrap();
        assert!(
            hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{hash}"
        );
        assert!(passwords
            .verify(here(), "correct horse".into(), Some(hash.clone()))
            .await
            .unwrap());
        assert!(!passwords
            .verify(here(), "wrong horse".into(), Some(hash))
            .await
            .unwrap());
    }

    #[actix_rt::test]
    async fn an_unknown_user_never_verifies() {
        let passwords = passwords();
        assert!(!passwords
            .verify(here(), "anything".into(), None)
            .await
            .unwrap());
    }

    #[test]
    fn trivially_weak_passwords_are_refused_with_a_reason() {
        for weak in [
            "12345678",
            "password",
            "PASSWORD",
            " Password1 ",
            "iloveyou",
            "qwertyuiop",
            "        ",
            "\t\t\t\t\t\t\t\t",
            "aaaaaaaaaaaa",
            "correct\0horse",
            "correct horse\n",
            "short",
        ] {
            let reason = check_new(weak).expect_err(weak);
            assert!(
                reason.starts_with("Password") || reason.starts_with("This"),
                "{reason}"
            );
        }
        assert!(check_new(&"x".repeat(MAX_PASSWORD_BYTES + 1)).is_err());
    }

    #[test]
    fn ordinary_passwords_are_accepted() {
        for fine in [
            "correct horse battery",
            "another password",
            "long enough password",
            "Tr0ub4dor&3x",
            "mot de passe très long",
        ] {
            assert_eq!(check_new(fine), Ok(()), "{fine}");
        }
        assert_eq!(COMMON.len(), 10_000);
    }

    #[test]
    fn hashes_agree_with_the_argon2_crate_both_ways() {
        let mut memory = Memory::default();
        let ours = hash_with(&mut memory, b"hunter22").unwrap();
        let parsed = PasswordHash::new(&ours).unwrap();
        assert!(Argon2::default()
            .verify_password(b"hunter22", &parsed)
            .is_ok());
        let theirs = Argon2::default()
            .hash_password(b"hunter22")
            .unwrap()
            .to_string();
        assert!(verify_with(&mut memory, b"hunter22", &theirs).unwrap());
        assert!(!verify_with(&mut memory, b"hunter23", &theirs).unwrap());
    }

    #[test]
    fn a_stored_hash_asking_for_more_memory_is_refused() {
        let costly = "$argon2id$v=19$m=1048576,t=2,p=1$c2FsdHNhbHRzYWx0$\
                      qW6Fjm2Pn5mQ7mMHDwE3z+LEc8VGPzgEtXlRl5MZ0PM";
        assert!(matches!(
            verify_with(&mut Memory::default(), b"x", costly),
            Err(HashError::TooCostly)
        ));
        assert!(verify_with(&mut Memory::default(), b"x", "not a hash").is_err());
    }
}

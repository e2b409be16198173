//! Access tokens: biscuit tokens signed by the relay's root key, carrying the user id and
//! an expiry check.
//!
//! The root private key lives in `auth.private_key_file`, generated with 0600 permissions
//! on first start. Verification needs only the public key, which `check-config` prints.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, SystemTime};

use biscuit_auth::builder::AuthorizerBuilder;
use biscuit_auth::macros::biscuit;
use biscuit_auth::{AuthorizerLimits, Biscuit, KeyPair, PrivateKey};

/// The authorizer's time budget. biscuit's default (1 ms) fails spuriously on a busy
/// 2-core machine; our policy is tiny, so this only guards against a pathological token.
const AUTHORIZER_TIME_LIMIT: Duration = Duration::from_millis(50);

/// Why a token was refused. The variants are for logs; clients only learn "invalid".
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Not a biscuit, or signed by another key, or tampered with.
    #[error("malformed or wrongly signed token")]
    Invalid,
    /// The expiry check failed, or another check or policy did.
    #[error("token expired or not authorised")]
    Refused,
}

/// Key file problems at start.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// Reading, creating or writing the file failed.
    #[error("key file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file does not hold a key.
    #[error("key file {path} does not hold an ed25519 private key")]
    Malformed {
        /// The file.
        path: String,
    },
}

/// Issues and verifies access tokens.
pub struct AccessTokens {
    root: KeyPair,
    ttl: Duration,
}

impl std::fmt::Debug for AccessTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessTokens")
            .field("public_key", &self.root.public().to_string())
            .finish_non_exhaustive()
    }
}

impl AccessTokens {
    /// Tokens signed by `root`, valid for `ttl`.
    pub fn new(root: KeyPair, ttl: Duration) -> Self {
        Self { root, ttl }
    }

    /// Loads the root key from `path`, creating it (mode 0600) if absent.
    pub fn load_or_create(path: &Path, ttl: Duration) -> Result<Self, KeyFileError> {
        Ok(Self::new(load_or_create_key(path)?, ttl))
    }

    /// The root public key, as `ed25519/<hex>`.
    pub fn public_key(&self) -> String {
        self.root.public().to_string()
    }

    /// A token for `user_id`, valid for the configured lifetime from now.
    pub fn issue(&self, user_id: &str) -> String {
        self.issue_expiring(user_id, SystemTime::now() + self.ttl)
    }

    /// A token for `user_id` that expires at `expires` (tests make expired ones).
    pub fn issue_expiring(&self, user_id: &str, expires: SystemTime) -> String {
        // unwrap: the datalog is fixed and its parameters are a string and a date, so
        // building and signing cannot fail.
        biscuit!(
            r#"user({user_id}); check if time($time), $time <= {expires};"#,
            user_id = user_id,
            expires = expires,
        )
        .build(&self.root)
        .and_then(|token| token.to_base64())
        .unwrap()
    }

    /// The user id in a valid, unexpired token signed by our key.
    pub fn verify(&self, token: &str) -> Result<String, TokenError> {
        let token = Biscuit::from_base64(token.trim(), self.root.public())
            .map_err(|_| TokenError::Invalid)?;
        let mut authorizer = AuthorizerBuilder::new()
            .time()
            .code("allow if user($user);")
            .map_err(|_| TokenError::Invalid)?
            .set_limits(AuthorizerLimits {
                max_time: AUTHORIZER_TIME_LIMIT,
                ..AuthorizerLimits::default()
            })
            .build(&token)
            .map_err(|_| TokenError::Invalid)?;
        authorizer.authorize().map_err(|_| TokenError::Refused)?;
        let users: Vec<(String,)> = authorizer
            .query("data($user) <- user($user)")
            .map_err(|_| TokenError::Refused)?;
        match users.as_slice() {
            [(user,)] => Ok(user.clone()),
            _ => Err(TokenError::Refused),
        }
    }
}

/// The public key of the key file at `path`, if it exists (for `check-config`).
pub fn public_key_of(path: &Path) -> Result<Option<String>, KeyFileError> {
    if !path.exists() {
        return Ok(None);
    }
    Ok(Some(read_key(path)?.public().to_string()))
}

fn read_key(path: &Path) -> Result<KeyPair, KeyFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| KeyFileError::Io {
        path: path.display().to_string(),
        source,
    })?;
    let key: PrivateKey = text.trim().parse().map_err(|_| KeyFileError::Malformed {
        path: path.display().to_string(),
    })?;
    Ok(KeyPair::from(&key))
}

fn load_or_create_key(path: &Path) -> Result<KeyPair, KeyFileError> {
    if path.exists() {
        return read_key(path);
    }
    let io = |source| KeyFileError::Io {
        path: path.display().to_string(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let key = KeyPair::new();
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).map_err(io)?;
    writeln!(file, "{}", key.private().to_prefixed_string()).map_err(io)?;
    tracing::info!(path = %path.display(), public_key = %key.public(), "generated a new biscuit root key");
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens() -> AccessTokens {
        AccessTokens::new(KeyPair::new(), Duration::from_secs(900))
    }

    #[test]
    fn a_fresh_token_yields_its_user() {
        let tokens = tokens();
        let token = tokens.issue("user-1");
        assert_eq!(tokens.verify(&token).unwrap(), "user-1");
    }

    #[test]
    fn an_expired_token_is_refused() {
        let tokens = tokens();
        let token = tokens.issue_expiring("user-1", SystemTime::now() - Duration::from_secs(1));
        assert!(matches!(tokens.verify(&token), Err(TokenError::Refused)));
    }

    #[test]
    fn a_token_signed_by_another_key_is_refused() {
        let token = tokens().issue("user-1");
        assert!(matches!(tokens().verify(&token), Err(TokenError::Invalid)));
    }

    #[test]
    fn a_tampered_or_forged_token_is_refused() {
        let tokens = tokens();
        let token = tokens.issue("user-1");
        let mut bytes = token.into_bytes();
        let middle = bytes.len() / 2;
        bytes[middle] = if bytes[middle] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(bytes).unwrap();
        assert!(tokens.verify(&tampered).is_err());
        assert!(tokens.verify("not-a-token").is_err());
        assert!(tokens.verify("").is_err());
    }

    #[test]
    fn the_key_file_is_created_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/root.key");
        let first = AccessTokens::load_or_create(&path, Duration::from_secs(60)).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let again = AccessTokens::load_or_create(&path, Duration::from_secs(60)).unwrap();
        assert_eq!(first.public_key(), again.public_key());
        assert_eq!(public_key_of(&path).unwrap(), Some(first.public_key()));
        let token = first.issue("u");
        assert_eq!(again.verify(&token).unwrap(), "u");
    }
}

//! Unit tests of the relay's tokens: kinds, expiry, key ids, size and block bounds.

use super::*;
use biscuit_auth::Biscuit;

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

/// A token signed by `tokens`' root key and id, holding exactly `datalog`.
fn handmade(tokens: &AccessTokens, datalog: &str) -> String {
    Biscuit::builder()
        .code(datalog)
        .unwrap()
        .root_key_id(tokens.root_id)
        .build(&tokens.root)
        .unwrap()
        .to_base64()
        .unwrap()
}

#[test]
fn an_access_token_and_a_device_token_never_stand_in_for_each_other() {
    let tokens = tokens();
    let access = tokens.issue("user-1");
    let device = tokens.issue_device("user-1");
    assert_eq!(tokens.verify_device(&device).unwrap(), "user-1");
    assert!(matches!(tokens.verify(&device), Err(TokenError::Refused)));
    assert!(matches!(
        tokens.verify_device(&access),
        Err(TokenError::Refused)
    ));
}

#[test]
fn a_token_without_a_kind_or_an_expiry_fact_is_refused() {
    let tokens = tokens();
    let later = SystemTime::now() + Duration::from_secs(600);
    let later = biscuit_auth::builder::date(&later);
    // The old shape: an expiry check, but no kind and no expires fact.
    let old = handmade(
        &tokens,
        &format!(r#"user("u"); check if time($t), $t <= {later};"#),
    );
    assert!(matches!(tokens.verify(&old), Err(TokenError::Refused)));
    // A kind but no expiry at all.
    let endless = handmade(&tokens, r#"user("u"); kind("access");"#);
    assert!(matches!(tokens.verify(&endless), Err(TokenError::Refused)));
    // The full shape passes, so the refusals above are for what is missing.
    let full = handmade(
        &tokens,
        &format!(r#"user("u"); kind("access"); expires({later});"#),
    );
    assert_eq!(tokens.verify(&full).unwrap(), "u");
}

#[test]
fn a_token_with_appended_blocks_is_refused() {
    let tokens = tokens();
    let token = tokens.issue("user-1");
    let parsed = Biscuit::from_base64(&token, tokens.root.public()).unwrap();
    let attenuated = parsed
        .append(biscuit_auth::builder::BlockBuilder::new())
        .unwrap()
        .to_base64()
        .unwrap();
    assert!(
        attenuated.len() <= MAX_TOKEN_BYTES,
        "the block count refuses it"
    );
    assert!(matches!(
        tokens.verify(&attenuated),
        Err(TokenError::TooLarge)
    ));
}

#[test]
fn a_bloated_token_is_refused_by_its_size_before_any_signature_check() {
    let tokens = tokens();
    let mut bloated = Biscuit::from_base64(tokens.issue("user-1"), tokens.root.public()).unwrap();
    for _ in 0..20 {
        bloated = bloated
            .append(biscuit_auth::builder::BlockBuilder::new())
            .unwrap();
    }
    let bloated = bloated.to_base64().unwrap();
    assert!(bloated.len() > MAX_TOKEN_BYTES);
    assert!(matches!(tokens.verify(&bloated), Err(TokenError::TooLarge)));
    assert!(matches!(
        tokens.verify(&"A".repeat(100_000)),
        Err(TokenError::TooLarge)
    ));
}

#[test]
fn our_tokens_fit_well_within_the_size_bound() {
    let tokens = tokens();
    let user = uuid::Uuid::new_v4().to_string();
    for token in [tokens.issue(&user), tokens.issue_device(&user)] {
        assert!(token.len() * 2 <= MAX_TOKEN_BYTES, "{}", token.len());
    }
}

#[test]
fn tokens_of_an_accepted_key_verify_and_of_an_unknown_key_or_none_do_not() {
    let old = tokens();
    let rotated = AccessTokens::new(KeyPair::new(), Duration::from_secs(900))
        .with_accepted_keys([old.root.public()]);
    let token = old.issue("user-1");
    assert_eq!(rotated.verify(&token).unwrap(), "user-1");
    // ...and the other way round, as a node that has not switched yet would.
    let not_yet = AccessTokens::new(KeyPair::from(&old.root.private()), Duration::from_secs(900))
        .with_accepted_keys([rotated.root.public()]);
    assert_eq!(not_yet.verify(&rotated.issue("user-2")).unwrap(), "user-2");
    // Without the old key the token is refused.
    let retired = AccessTokens::new(
        KeyPair::from(&rotated.root.private()),
        Duration::from_secs(900),
    );
    assert!(matches!(retired.verify(&token), Err(TokenError::Invalid)));
    // A token that names no key id is refused even if our key signed it.
    let later = biscuit_auth::builder::date(&(SystemTime::now() + Duration::from_secs(600)));
    let anonymous = Biscuit::builder()
        .code(format!(r#"user("u"); kind("access"); expires({later});"#))
        .unwrap()
        .build(&old.root)
        .unwrap()
        .to_base64()
        .unwrap();
    assert!(matches!(old.verify(&anonymous), Err(TokenError::Invalid)));
}

#[test]
fn a_key_file_made_from_32_random_bytes_in_hex_loads() {
    // What the README's rotation steps write with `openssl rand -hex 32`.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("next.key");
    let hex: String = (0..32).map(|i| format!("{:02x}", i * 7 + 3)).collect();
    std::fs::write(&path, format!("ed25519-private/{hex}\n")).unwrap();
    let tokens = AccessTokens::load_or_create(&path, Duration::from_secs(60)).unwrap();
    assert_eq!(tokens.verify(&tokens.issue("u")).unwrap(), "u");
}

#[test]
fn public_keys_parse_from_their_printed_form() {
    let key = KeyPair::new().public();
    assert_eq!(parse_public_key(&key.to_string()), Some(key));
    assert_eq!(parse_public_key("ed25519/nothex"), None);
}

/// Measures what one `auth` costs once size and blocks are bounded (run with
/// `--nocapture` to see it); the bound only catches a pathological slowdown.
#[test]
fn verification_of_the_largest_accepted_token_is_cheap() {
    let tokens = tokens();
    let token = tokens.issue(&"u".repeat(MAX_TOKEN_BYTES / 2 - 16));
    assert!(token.len() <= MAX_TOKEN_BYTES, "{}", token.len());
    let runs = 200;
    let started = std::time::Instant::now();
    for _ in 0..runs {
        tokens.verify(&token).unwrap();
    }
    let each = started.elapsed() / runs;
    eprintln!("one verification of a {}-byte token: {each:?}", token.len());
    assert!(each < Duration::from_millis(20), "{each:?}");
}

//! Unit tests of the pairing rules, without actix or sockets.

use super::*;

const MAC: ConnId = 1;
const BROWSER: ConnId = 2;
const OTHER_BROWSER: ConnId = 3;

fn table() -> PairingTable {
    PairingTable::new(PairingRules {
        format: CodeFormat::new("346789ABCDEFGHJKLMNPQRTUVWXY", 6),
        code_ttl: Duration::from_secs(300),
        resume_grace: Duration::from_secs(30),
        retired_code_memory: Duration::from_secs(900),
        max_pending_codes: 100,
    })
}

fn code_of(effects: &[Effect]) -> String {
    effects
        .iter()
        .find_map(|e| match e {
            Effect::Registered { code, .. } => Some(code.clone()),
            _ => None,
        })
        .expect("a registered effect")
}

fn error_of(effects: &[Effect]) -> Option<ErrorCode> {
    effects.iter().find_map(|e| match e {
        Effect::Error { code, .. } => Some(*code),
        _ => None,
    })
}

fn session_of(effects: &[Effect]) -> Uuid {
    effects
        .iter()
        .find_map(|e| match e {
            Effect::Pair { session, .. } => Some(*session),
            _ => None,
        })
        .expect("a pair effect")
}

/// A mac connected and a browser joined it; returns the table, code and session.
fn paired(now: Instant) -> (PairingTable, String, Uuid) {
    let mut t = table();
    let code = code_of(&t.mac_connected(MAC, now));
    let effects = t.browser_join(BROWSER, &code, now);
    let session = session_of(&effects);
    (t, code, session)
}

#[test]
fn a_mac_gets_a_code_and_its_expiry_timer_on_connect() {
    let mut t = table();
    let effects = t.mac_connected(MAC, Instant::now());
    let code = code_of(&effects);
    assert!(effects.contains(&Effect::ScheduleExpiry {
        code,
        after: Duration::from_secs(300)
    }));
}

#[test]
fn joining_pairs_both_sides_and_cancels_the_expiry_timer() {
    let now = Instant::now();
    let mut t = table();
    let code = code_of(&t.mac_connected(MAC, now));
    let effects = t.browser_join(BROWSER, &format!("  {} ", code.to_lowercase()), now);
    assert!(effects.contains(&Effect::CancelExpiry { code: code.clone() }));
    assert!(matches!(
        effects[1],
        Effect::Pair {
            mac: Some(MAC),
            browser: Some(BROWSER),
            ..
        }
    ));
    assert_eq!(t.pairing_count(), 1);
}

#[test]
fn codes_are_single_use_even_after_the_browser_leaves() {
    let now = Instant::now();
    let (mut t, code, _) = paired(now);
    let effects = t.browser_join(OTHER_BROWSER, &code, now);
    assert_eq!(error_of(&effects), Some(ErrorCode::AlreadyJoined));
    t.disconnected(BROWSER, Role::Browser, true, now);
    let effects = t.browser_join(OTHER_BROWSER, &code, now);
    assert_eq!(error_of(&effects), Some(ErrorCode::AlreadyJoined));
}

#[test]
fn a_paired_browser_cannot_join_again() {
    let now = Instant::now();
    let (mut t, _, _) = paired(now);
    let code = code_of(&t.mac_connected(10, now));
    let effects = t.browser_join(BROWSER, &code, now);
    assert_eq!(error_of(&effects), Some(ErrorCode::AlreadyJoined));
}

#[test]
fn unknown_and_malformed_codes_are_invalid() {
    let now = Instant::now();
    let mut t = table();
    let effects = t.browser_join(BROWSER, "AAAAAA", now);
    assert_eq!(error_of(&effects), Some(ErrorCode::InvalidCode));
    let effects = t.browser_join(BROWSER, "0O1I", now);
    assert_eq!(error_of(&effects), Some(ErrorCode::InvalidCode));
}

#[test]
fn an_expired_code_is_refused_even_before_its_timer_runs() {
    let now = Instant::now();
    let mut t = table();
    let code = code_of(&t.mac_connected(MAC, now));
    let effects = t.browser_join(BROWSER, &code, now + Duration::from_secs(300));
    assert_eq!(error_of(&effects), Some(ErrorCode::ExpiredCode));
}

#[test]
fn expiry_tells_the_mac_and_later_joins_get_expired_code() {
    let now = Instant::now();
    let mut t = table();
    let code = code_of(&t.mac_connected(MAC, now));
    let later = now + Duration::from_secs(301);
    let effects = t.code_expired(&code, later);
    assert_eq!(
        effects,
        vec![Effect::Error {
            to: MAC,
            code: ErrorCode::ExpiredCode,
            message: "your code expired; send register for a new one"
        }]
    );
    let effects = t.browser_join(BROWSER, &code, later);
    assert_eq!(error_of(&effects), Some(ErrorCode::ExpiredCode));
}

#[test]
fn register_withdraws_the_old_code_and_issues_a_new_one() {
    let now = Instant::now();
    let mut t = table();
    let old = code_of(&t.mac_connected(MAC, now));
    let effects = t.mac_register(MAC, "client-1".into(), now);
    let new = code_of(&effects);
    assert_ne!(old, new);
    assert!(effects.contains(&Effect::CancelExpiry { code: old.clone() }));
    let effects = t.browser_join(BROWSER, &old, now);
    assert_eq!(error_of(&effects), Some(ErrorCode::ExpiredCode));
}

#[test]
fn register_while_paired_is_refused() {
    let now = Instant::now();
    let (mut t, _, _) = paired(now);
    let effects = t.mac_register(MAC, "client-1".into(), now);
    assert_eq!(error_of(&effects), Some(ErrorCode::InvalidMessage));
}

#[test]
fn a_clean_close_ends_the_pairing_and_tells_the_partner_at_once() {
    let now = Instant::now();
    let (mut t, _, _) = paired(now);
    let effects = t.disconnected(MAC, Role::Mac, true, now);
    assert_eq!(
        effects,
        vec![Effect::PartnerGone {
            to: BROWSER,
            code: ErrorCode::MacDisconnected
        }]
    );
    assert_eq!(t.pairing_count(), 0);

    let (mut t, _, _) = paired(now);
    let effects = t.disconnected(BROWSER, Role::Browser, true, now);
    assert_eq!(
        effects,
        vec![Effect::PartnerGone {
            to: MAC,
            code: ErrorCode::BrowserDisconnected
        }]
    );
}

#[test]
fn a_lost_browser_can_resume_within_the_grace_period() {
    let now = Instant::now();
    let (mut t, _, session) = paired(now);
    let effects = t.disconnected(BROWSER, Role::Browser, false, now);
    assert!(effects.contains(&Effect::PartnerAway { to: MAC }));
    assert!(effects.contains(&Effect::ScheduleGrace {
        session,
        role: Role::Browser,
        after: Duration::from_secs(30)
    }));
    let effects = t.browser_resume(OTHER_BROWSER, &session.to_string());
    assert_eq!(
        effects,
        vec![Effect::Pair {
            session,
            mac: Some(MAC),
            browser: Some(OTHER_BROWSER)
        }]
    );
    // The grace timer that fires later finds the browser back and changes nothing.
    assert!(t
        .grace_expired(session, Role::Browser, now + Duration::from_secs(31))
        .is_empty());
    assert_eq!(t.pairing_count(), 1);
}

#[test]
fn after_the_grace_period_the_partner_is_told_and_resume_fails() {
    let now = Instant::now();
    let (mut t, _, session) = paired(now);
    t.disconnected(BROWSER, Role::Browser, false, now);
    let effects = t.grace_expired(session, Role::Browser, now + Duration::from_secs(30));
    assert_eq!(
        effects,
        vec![Effect::PartnerGone {
            to: MAC,
            code: ErrorCode::BrowserDisconnected
        }]
    );
    let effects = t.browser_resume(OTHER_BROWSER, &session.to_string());
    assert_eq!(error_of(&effects), Some(ErrorCode::InvalidCode));
}

#[test]
fn resume_with_a_live_session_replaces_the_old_browser_and_its_late_close_is_ignored() {
    let now = Instant::now();
    let (mut t, _, session) = paired(now);
    let effects = t.browser_resume(OTHER_BROWSER, &session.to_string());
    assert!(effects.contains(&Effect::Replaced { conn: BROWSER }));
    assert!(t.disconnected(BROWSER, Role::Browser, true, now).is_empty());
    assert_eq!(t.pairing_count(), 1);
}

#[test]
fn a_lost_mac_resumes_by_registering_with_its_client_id() {
    let now = Instant::now();
    let mut t = table();
    code_of(&t.mac_connected(MAC, now));
    let code = code_of(&t.mac_register(MAC, "client-1".into(), now));
    let session = session_of(&t.browser_join(BROWSER, &code, now));
    let effects = t.disconnected(MAC, Role::Mac, false, now);
    assert!(effects.contains(&Effect::PartnerAway { to: BROWSER }));

    let new_mac = 20;
    let fresh = code_of(&t.mac_connected(new_mac, now));
    let effects = t.mac_register(new_mac, "client-1".into(), now);
    assert!(effects.contains(&Effect::CancelExpiry { code: fresh }));
    assert!(effects.contains(&Effect::Pair {
        session,
        mac: Some(new_mac),
        browser: Some(BROWSER)
    }));
}

#[test]
fn a_pairing_whose_both_sides_are_lost_ends() {
    let now = Instant::now();
    let (mut t, _, _) = paired(now);
    t.disconnected(BROWSER, Role::Browser, false, now);
    t.disconnected(MAC, Role::Mac, false, now);
    assert_eq!(t.pairing_count(), 0);
}

#[test]
fn unpair_ends_the_pairing_and_tells_the_one_who_asked() {
    let now = Instant::now();
    let (mut t, _, _) = paired(now);
    let effects = t.unpair(MAC, Role::Mac);
    assert_eq!(
        effects,
        vec![Effect::PartnerGone {
            to: MAC,
            code: ErrorCode::BrowserDisconnected
        }]
    );
    assert_eq!(t.pairing_count(), 0);
}

#[test]
fn pending_codes_are_bounded() {
    let now = Instant::now();
    let mut t = table();
    for conn in 0..100 {
        code_of(&t.mac_connected(conn, now));
    }
    let effects = t.mac_connected(100, now);
    assert_eq!(error_of(&effects), Some(ErrorCode::RateLimited));
}

#[test]
fn retired_codes_are_bounded_and_forgotten_after_their_memory() {
    let now = Instant::now();
    let mut t = table();
    t.mac_connected(MAC, now);
    for _ in 0..1000 {
        t.mac_register(MAC, "loop".into(), now);
    }
    // 1 pending + at most max_pending_codes retired.
    assert!(t.code_count() <= 101, "{}", t.code_count());
    t.sweep(now + Duration::from_secs(901));
    assert_eq!(t.code_count(), 1);
}

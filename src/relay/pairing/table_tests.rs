//! Unit tests of the pairing rules, without actix or sockets.

use super::*;

const MAC: ConnId = conn(1);
const BROWSER: ConnId = conn(2);
const OTHER_BROWSER: ConnId = conn(3);

const fn conn(id: u64) -> ConnId {
    ConnId::new(id)
}

fn table() -> PairingTable {
    PairingTable::new(PairingRules {
        format: CodeFormat::new("346789ABCDEFGHJKLMNPQRTUVWXY", 6),
        code_ttl: Duration::from_secs(300),
        resume_grace: Duration::from_secs(30),
        retired_code_memory: Duration::from_secs(900),
        max_pending_codes: 100,
    })
}

/// A clientId secret enough to resume by.
fn secret_id() -> ClientKey {
    ClientKey::from(uuid::Uuid::new_v4().to_string())
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

fn session_of(effects: &[Effect]) -> PairingId {
    effects
        .iter()
        .find_map(|e| match e {
            Effect::Pair { session, .. } => Some(*session),
            _ => None,
        })
        .expect("a pair effect")
}

/// A mac connected and a browser joined it; returns the table, code and session.
fn paired(now: Instant) -> (PairingTable, String, PairingId) {
    let mut t = table();
    let code = code_of(&t.mac_connected(MAC, now));
    let effects = t.browser_join(BROWSER, &code, now);
    let session = session_of(&effects);
    (t, code, session)
}

#[test]
fn a_mac_gets_a_code_and_its_expiry_deadline_on_connect() {
    let now = Instant::now();
    let mut t = table();
    code_of(&t.mac_connected(MAC, now));
    assert_eq!(t.next_deadline(), Some(now + Duration::from_secs(300)));
}

#[test]
fn joining_pairs_both_sides_and_cancels_the_expiry_deadline() {
    let now = Instant::now();
    let mut t = table();
    let code = code_of(&t.mac_connected(MAC, now));
    let effects = t.browser_join(BROWSER, &format!("  {} ", code.to_lowercase()), now);
    assert!(matches!(
        effects[..],
        [Effect::Pair {
            mac: Some(MAC),
            browser: Some(BROWSER),
            resumed: None,
            ..
        }]
    ));
    assert_eq!(t.pairing_count(), 1);
    assert_eq!(t.deadline_count(), 0);
    assert!(t.fire(now + Duration::from_secs(301)).is_empty());
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
    let code = code_of(&t.mac_connected(conn(10), now));
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
fn only_a_well_formed_code_never_seen_here_may_be_another_nodes() {
    let now = Instant::now();
    let (t, used, _) = paired(now);
    assert!(t.is_foreign("yyyyyy "), "typed as a person would");
    assert!(!t.is_foreign(&used), "a code retired here is this node's");
    assert!(!t.is_foreign("YYY"), "not a code at all");
}

#[test]
fn an_expired_code_is_refused_even_before_its_deadline_fires() {
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
    assert!(t.fire(now + Duration::from_secs(299)).is_empty());
    let later = now + Duration::from_secs(300);
    let effects = t.fire(later);
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
    let effects = t.mac_register(MAC, secret_id(), now);
    let new = code_of(&effects);
    assert_ne!(old, new);
    assert_eq!(t.deadline_count(), 1, "only the new code has a deadline");
    let effects = t.browser_join(BROWSER, &old, now);
    assert_eq!(error_of(&effects), Some(ErrorCode::ExpiredCode));
}

#[test]
fn register_while_paired_is_refused() {
    let now = Instant::now();
    let (mut t, _, _) = paired(now);
    let effects = t.mac_register(MAC, secret_id(), now);
    assert_eq!(error_of(&effects), Some(ErrorCode::InvalidMessage));
}

#[test]
fn a_clean_close_ends_the_pairing_and_tells_the_partner_at_once() {
    let now = Instant::now();
    let (mut t, _, session) = paired(now);
    let effects = t.disconnected(MAC, Role::Mac, true, now);
    assert_eq!(
        effects,
        vec![
            Effect::Ended { session },
            Effect::PartnerGone {
                to: BROWSER,
                code: ErrorCode::MacDisconnected
            }
        ]
    );
    assert_eq!(t.pairing_count(), 0);

    let (mut t, _, session) = paired(now);
    let effects = t.disconnected(BROWSER, Role::Browser, true, now);
    assert_eq!(
        effects,
        vec![
            Effect::Ended { session },
            Effect::PartnerGone {
                to: MAC,
                code: ErrorCode::BrowserDisconnected
            }
        ]
    );
}

#[test]
fn a_lost_browser_can_resume_within_the_grace_period() {
    let now = Instant::now();
    let (mut t, _, session) = paired(now);
    let effects = t.disconnected(BROWSER, Role::Browser, false, now);
    assert_eq!(
        effects,
        vec![Effect::Away {
            session,
            role: Role::Browser
        }]
    );
    assert_eq!(t.next_deadline(), Some(now + Duration::from_secs(30)));
    let effects = t.browser_resume(OTHER_BROWSER, &session.to_string());
    assert_eq!(
        effects,
        vec![Effect::Pair {
            session,
            mac: Some(MAC),
            browser: Some(OTHER_BROWSER),
            resumed: Some(Role::Browser)
        }]
    );
    // The grace deadline is gone with the resume: nothing happens when it would have run.
    assert!(t.fire(now + Duration::from_secs(31)).is_empty());
    assert_eq!(t.pairing_count(), 1);
}

#[test]
fn after_the_grace_period_the_partner_is_told_and_resume_fails() {
    let now = Instant::now();
    let (mut t, _, session) = paired(now);
    t.disconnected(BROWSER, Role::Browser, false, now);
    let effects = t.fire(now + Duration::from_secs(30));
    assert_eq!(
        effects,
        vec![
            Effect::Ended { session },
            Effect::PartnerGone {
                to: MAC,
                code: ErrorCode::BrowserDisconnected
            }
        ]
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
fn a_lost_mac_resumes_by_registering_with_its_secret_client_id() {
    let now = Instant::now();
    let mut t = table();
    let id = secret_id();
    code_of(&t.mac_connected(MAC, now));
    let code = code_of(&t.mac_register(MAC, id.clone(), now));
    let session = session_of(&t.browser_join(BROWSER, &code, now));
    let effects = t.disconnected(MAC, Role::Mac, false, now);
    assert!(effects.contains(&Effect::Away {
        session,
        role: Role::Mac
    }));

    let new_mac = conn(20);
    code_of(&t.mac_connected(new_mac, now));
    let effects = t.mac_register(new_mac, id, now);
    assert!(effects.contains(&Effect::Pair {
        session,
        mac: Some(new_mac),
        browser: Some(BROWSER),
        resumed: Some(Role::Mac)
    }));
    assert_eq!(
        t.deadline_count(),
        0,
        "fresh code withdrawn, grace cancelled"
    );
}

#[test]
fn a_guessable_client_id_never_takes_a_pairing_over() {
    let now = Instant::now();
    let mut t = table();
    code_of(&t.mac_connected(MAC, now));
    let code = code_of(&t.mac_register(MAC, "mac-1".into(), now));
    session_of(&t.browser_join(BROWSER, &code, now));
    t.disconnected(MAC, Role::Mac, false, now);

    // A stranger who sends the same guessable clientId gets a fresh code, not the pairing.
    let stranger = conn(30);
    code_of(&t.mac_connected(stranger, now));
    let effects = t.mac_register(stranger, "mac-1".into(), now);
    assert!(!effects.iter().any(|e| matches!(e, Effect::Pair { .. })));
    code_of(&effects);
}

#[test]
fn a_pairing_whose_both_sides_are_lost_ends() {
    let now = Instant::now();
    let (mut t, _, _) = paired(now);
    t.disconnected(BROWSER, Role::Browser, false, now);
    t.disconnected(MAC, Role::Mac, false, now);
    assert_eq!(t.pairing_count(), 0);
    assert_eq!(
        t.deadline_count(),
        0,
        "no grace deadline outlives its pairing"
    );
}

#[test]
fn unpair_ends_the_pairing_and_tells_the_one_who_asked() {
    let now = Instant::now();
    let (mut t, _, session) = paired(now);
    let effects = t.unpair(MAC, Role::Mac);
    assert_eq!(
        effects,
        vec![
            Effect::Ended { session },
            Effect::PartnerGone {
                to: MAC,
                code: ErrorCode::BrowserDisconnected
            }
        ]
    );
    assert_eq!(t.pairing_count(), 0);
}

#[test]
fn pending_codes_are_bounded() {
    let now = Instant::now();
    let mut t = table();
    for id in 0..100 {
        code_of(&t.mac_connected(conn(id), now));
    }
    let effects = t.mac_connected(conn(100), now);
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
    t.fire(now + Duration::from_secs(299));
    assert_eq!(t.code_count(), 101);
    // At 900 s the retired codes are forgotten (and the pending one expired at 300 s is
    // remembered until 1200 s).
    t.fire(now + Duration::from_secs(901));
    assert_eq!(t.code_count(), 1);
}

#[test]
fn firing_visits_only_what_is_due_however_many_deadlines_wait() {
    let now = Instant::now();
    let mut t = PairingTable::new(PairingRules {
        max_pending_codes: 20_000,
        ..table().rules
    });
    for id in 0..10_000 {
        code_of(&t.mac_connected(conn(id), now));
    }
    assert_eq!(t.deadline_count(), 10_000);
    // Nothing is due: firing changes nothing and the earliest deadline is still 300 s out.
    assert!(t.fire(now + Duration::from_secs(1)).is_empty());
    assert_eq!(t.next_deadline(), Some(now + Duration::from_secs(300)));
    assert_eq!(t.deadline_count(), 10_000);
}

#[test]
fn a_leaving_node_keeps_pairings_whose_sides_all_went_and_another_adopts_them() {
    let now = Instant::now();
    let (mut t, _, session) = paired(now);
    let client = secret_id();
    t.leave();
    // Both sides go, one of them with a close frame: neither ends the pairing.
    t.disconnected(BROWSER, Role::Browser, true, now);
    t.disconnected(MAC, Role::Mac, false, now);
    assert_eq!(t.pairing_count(), 1);
    let taken = t.take_pairings();
    assert_eq!(taken, vec![(session, None)]);
    assert_eq!(t.pairing_count(), 0);
    // Its grace timers went with it: what is left is the used code's memory (15 min).
    assert!(t.next_deadline() > Some(now + Duration::from_secs(30)));

    // Another node adopts it: both sides away, each with a full grace.
    let mut other = table();
    other.adopt(session, Some(client.clone()), now);
    assert!(other.knows_session(&session.to_string()));
    assert!(other.knows_client(&client));
    assert_eq!(other.next_deadline(), Some(now + Duration::from_secs(30)));
    let effects = other.browser_resume(OTHER_BROWSER, &session.to_string());
    assert_eq!(session_of(&effects), session);
}

#[test]
fn a_pairing_whose_sides_both_moved_waits_for_both() {
    // Both sides' node (their gateway) left: each comes back on another node.
    let now = Instant::now();
    let (mut t, _, session) = paired(now);
    t.departed(BROWSER, Role::Browser, Departure::Moved, now);
    t.departed(MAC, Role::Mac, Departure::Moved, now);
    assert_eq!(t.pairing_count(), 1, "kept for both");
    assert_eq!(t.deadline_count(), 2, "each with its grace");
    let effects = t.browser_resume(conn(40), &session.to_string());
    assert!(
        effects.iter().any(|e| matches!(e, Effect::Pair { .. })),
        "{effects:?}"
    );
}

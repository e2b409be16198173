//! Random sequences of quick-pairing events against `PairingTable` and the reference model.

use std::time::{Duration, Instant};

use hermit_relay::ids::{ClientKey, ConnId, Role};
use hermit_relay::relay::pairing::table::{Effect, PairingTable};
use proptest::prelude::*;
use proptest::sample::Index;

use super::pairing_model::{formats, rules, Model};

/// The `clientId`s macs use: three secret ones (UUID v4, resumable) and one that is not.
const KEYS: [&str; 4] = [
    "6f1c4b1e-8c1a-4d47-9a59-1d1c8f0e2a01",
    "0b7e4f7a-2d55-4a43-8f2c-5e9b7c3d4e02",
    "a3d2c1b0-9e8f-4a7b-8c6d-5e4f3a2b1c03",
    "my-mac",
];

#[derive(Debug, Clone)]
enum CodePick {
    /// A code the relay issued (maybe long ago), as shown.
    Issued(Index),
    /// The same, as a person types it: lower case, spaces around.
    Typed(Index),
    Junk(String),
}

#[derive(Debug, Clone)]
enum Op {
    MacConnect,
    BrowserOpen,
    Register(Index, usize),
    Join(Index, CodePick),
    Resume(Index, Option<Index>),
    /// A connection ends: with a close frame (`true`) or lost.
    Disconnect(Index, bool),
    Unpair(Index),
    /// Time passes (ms) and the table's timer fires.
    Advance(u64),
}

fn op() -> impl Strategy<Value = Op> {
    let code = prop_oneof![
        3 => any::<Index>().prop_map(CodePick::Issued),
        1 => any::<Index>().prop_map(CodePick::Typed),
        1 => "[A-Z0-9 ]{0,8}".prop_map(CodePick::Junk),
    ];
    prop_oneof![
        3 => Just(Op::MacConnect),
        3 => Just(Op::BrowserOpen),
        3 => (any::<Index>(), 0..KEYS.len()).prop_map(|(i, k)| Op::Register(i, k)),
        5 => (any::<Index>(), code).prop_map(|(i, c)| Op::Join(i, c)),
        2 => (any::<Index>(), prop::option::weighted(0.8, any::<Index>())).prop_map(|(i, s)| Op::Resume(i, s)),
        3 => (any::<Index>(), any::<bool>()).prop_map(|(i, clean)| Op::Disconnect(i, clean)),
        1 => any::<Index>().prop_map(Op::Unpair),
        3 => prop_oneof![0u64..3_000, 3_000u64..25_000].prop_map(Op::Advance),
    ]
}

/// Effects of one deadline firing may come in any order among timers due at once; compare
/// them as multisets.
fn same_set(actual: &[Effect], expected: &[Effect]) -> bool {
    let mut left: Vec<&Effect> = expected.iter().collect();
    actual.len() == expected.len()
        && actual
            .iter()
            .all(|effect| match left.iter().position(|e| *e == effect) {
                Some(i) => {
                    left.swap_remove(i);
                    true
                }
                None => false,
            })
}

fn run(format: usize, max_pending: usize, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let (format, space) = formats()[format].clone();
    let rules = rules(format, max_pending);
    let mut table = PairingTable::new(rules.clone());
    let mut model = Model::new(rules, space);
    let mut now = Instant::now();
    let mut next_conn = 1u64;
    // Every connection ever opened, with its role; closed ones stay (a late close of a
    // replaced connection is one of the cases) but are not used again once closed.
    let mut conns: Vec<(ConnId, Role, bool)> = Vec::new();
    for (step, op) in ops.into_iter().enumerate() {
        let open = |role: Option<Role>| -> Vec<(ConnId, Role)> {
            conns
                .iter()
                .filter(|(_, r, open)| *open && role.is_none_or(|role| *r == role))
                .map(|(c, r, _)| (*c, *r))
                .collect()
        };
        let macs = open(Some(Role::Mac));
        let browsers = open(Some(Role::Browser));
        let all = open(None);
        let (actual, expected) = match &op {
            Op::MacConnect => {
                let conn = ConnId::from(next_conn);
                next_conn += 1;
                conns.push((conn, Role::Mac, true));
                let actual = table.mac_connected(conn, now);
                (actual.clone(), model.mac_connected(conn, now, &actual))
            }
            Op::BrowserOpen => {
                conns.push((ConnId::from(next_conn), Role::Browser, true));
                next_conn += 1;
                continue;
            }
            Op::Register(i, key) if !macs.is_empty() => {
                let conn = i.get(&macs).0;
                let key = ClientKey::from(KEYS[*key]);
                let actual = table.mac_register(conn, key.clone(), now);
                (actual.clone(), model.mac_register(conn, key, now, &actual))
            }
            Op::Join(i, pick) if !browsers.is_empty() => {
                let conn = i.get(&browsers).0;
                let input = match pick {
                    CodePick::Issued(c) if !model.seen_codes.is_empty() => {
                        c.get(&model.seen_codes).clone()
                    }
                    CodePick::Typed(c) if !model.seen_codes.is_empty() => {
                        format!("  {} ", c.get(&model.seen_codes).to_lowercase())
                    }
                    CodePick::Junk(junk) => junk.clone(),
                    _ => "ZZZZZZ".to_owned(),
                };
                let actual = table.browser_join(conn, &input, now);
                (
                    actual.clone(),
                    model.browser_join(conn, &input, now, &actual),
                )
            }
            Op::Resume(i, pick) if !browsers.is_empty() => {
                let conn = i.get(&browsers).0;
                let text = match pick {
                    Some(s) if !model.seen_sessions.is_empty() => {
                        s.get(&model.seen_sessions).to_string()
                    }
                    _ => "00000000-0000-4000-8000-000000000000".to_owned(),
                };
                (
                    table.browser_resume(conn, &text),
                    model.browser_resume(conn, &text),
                )
            }
            Op::Disconnect(i, clean) if !all.is_empty() => {
                let (conn, role) = *i.get(&all);
                if let Some(entry) = conns.iter_mut().find(|(c, ..)| *c == conn) {
                    entry.2 = false;
                }
                (
                    table.disconnected(conn, role, *clean, now),
                    model.disconnected(conn, role, *clean, now),
                )
            }
            Op::Unpair(i) if !all.is_empty() => {
                let (conn, role) = *i.get(&all);
                (table.unpair(conn, role), model.unpair(conn, role))
            }
            Op::Advance(ms) => {
                now += Duration::from_millis(*ms);
                let (actual, expected) = (table.fire(now), model.fire(now));
                prop_assert!(
                    same_set(&actual, &expected),
                    "step {}: {:?}\n table: {:?}\n model: {:?}",
                    step,
                    op,
                    actual,
                    expected
                );
                (actual.clone(), actual)
            }
            _ => continue,
        };
        prop_assert_eq!(&actual, &expected, "step {}: {:?}", step, op);
        // A replaced connection is closed by the registry: it sends nothing more.
        for effect in &actual {
            if let Effect::Replaced { conn } = effect {
                prop_assert!(
                    conns.iter().any(|(c, ..)| c == conn),
                    "replaced an unknown connection"
                );
            }
        }
        prop_assert_eq!(
            table.pairing_count(),
            model.pairings.len(),
            "pairings after step {}",
            step
        );
        prop_assert_eq!(
            table.code_count(),
            model.codes.len(),
            "codes after step {}",
            step
        );
        prop_assert_eq!(
            table.deadline_count(),
            model.pending() + model.away(),
            "deadlines after step {}",
            step
        );
        prop_assert_eq!(
            table.next_deadline(),
            model.next_deadline(),
            "next deadline after step {}",
            step
        );
        prop_assert!(model.pending() <= max_pending);
    }
    Ok(())
}

proptest! {
    #[test]
    fn pairing_rules_agree_with_the_model(
        format in 0usize..2,
        max_pending in 1usize..5,
        ops in prop::collection::vec(op(), 1..60),
    ) {
        run(format, max_pending, ops)?;
    }
}

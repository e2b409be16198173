//! Unit tests of the account-mode routing rules.

use super::*;

const AGENT: ConnId = 1;
const ADA_CLIENT: ConnId = 10;
const ADA_OTHER_CLIENT: ConnId = 11;
const BOB_CLIENT: ConnId = 20;

fn session(id: &str) -> SessionInfo {
    SessionInfo {
        id: id.into(),
        name: "zsh".into(),
        command: "/bin/zsh".into(),
        created_at: "2026-11-22T10:00:00Z".into(),
        attached_clients: 0,
    }
}

/// Ada's machine `m1` online with session `s1`; Ada has one client, Bob one.
fn table() -> MachineTable {
    let mut t = MachineTable::default();
    t.client_online(ADA_CLIENT, "ada");
    t.client_online(BOB_CLIENT, "bob");
    t.agent_online(AGENT, "m1", "ada");
    t.agent_sessions(AGENT, vec![session("s1")]);
    t
}

fn errors(effects: &[Effect]) -> Vec<ErrorCode> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::ToClient {
                wire: ToClientWire::Error { code, .. },
                ..
            } => Some(*code),
            _ => None,
        })
        .collect()
}

#[test]
fn an_agent_coming_online_is_announced_to_its_users_clients_only() {
    let mut t = MachineTable::default();
    t.client_online(ADA_CLIENT, "ada");
    t.client_online(BOB_CLIENT, "bob");
    let effects = t.agent_online(AGENT, "m1", "ada");
    assert_eq!(
        effects,
        vec![Effect::ToClient {
            conn: ADA_CLIENT,
            wire: ToClientWire::MachineStatus {
                machine_id: "m1".into(),
                online: true
            }
        }]
    );
    assert!(t.status(&["m1".into(), "m2".into()])[0].online);
}

#[test]
fn another_users_client_gets_machine_not_found_for_everything() {
    let mut t = table();
    assert_eq!(
        errors(&t.list_sessions(BOB_CLIENT, "m1")),
        [ErrorCode::MachineNotFound]
    );
    assert_eq!(
        errors(&t.attach(BOB_CLIENT, "m1", "s1")),
        [ErrorCode::MachineNotFound]
    );
    assert_eq!(
        errors(&t.create_session(BOB_CLIENT, "m1", "x", "y")),
        [ErrorCode::MachineNotFound]
    );
    // Exactly what an unknown machine gets: nothing tells the two apart.
    assert_eq!(
        t.attach(BOB_CLIENT, "m1", "s1"),
        t.attach(BOB_CLIENT, "nope", "s1")
    );
}

#[test]
fn attach_links_agent_and_client_and_repeating_it_only_confirms() {
    let mut t = table();
    assert_eq!(
        t.attach(ADA_CLIENT, "m1", "s1"),
        vec![Effect::Link {
            agent: AGENT,
            client: ADA_CLIENT,
            session_id: "s1".into()
        }]
    );
    assert_eq!(
        t.attach(ADA_CLIENT, "m1", "s1"),
        vec![Effect::ToClient {
            conn: ADA_CLIENT,
            wire: ToClientWire::Attached {
                session_id: "s1".into()
            }
        }]
    );
    assert_eq!(
        errors(&t.attach(ADA_CLIENT, "m1", "s9")),
        [ErrorCode::SessionNotFound]
    );
}

#[test]
fn listed_sessions_count_attached_clients() {
    let mut t = table();
    t.client_online(ADA_OTHER_CLIENT, "ada");
    t.attach(ADA_CLIENT, "m1", "s1");
    t.attach(ADA_OTHER_CLIENT, "m1", "s1");
    match &t.list_sessions(ADA_CLIENT, "m1")[0] {
        Effect::ToClient {
            wire: ToClientWire::Sessions { sessions, .. },
            ..
        } => assert_eq!(sessions[0].attached_clients, 2),
        other => panic!("{other:?}"),
    }
}

#[test]
fn detach_without_attach_is_not_attached() {
    let mut t = table();
    assert_eq!(
        errors(&t.detach(ADA_CLIENT, "s1")),
        [ErrorCode::NotAttached]
    );
    t.attach(ADA_CLIENT, "m1", "s1");
    assert_eq!(
        t.detach(ADA_CLIENT, "s1"),
        vec![Effect::Unlink {
            agent: AGENT,
            client: ADA_CLIENT,
            session_id: "s1".into(),
            detach_agent: true,
            reply: true
        }]
    );
}

#[test]
fn a_client_that_leaves_is_detached_everywhere_and_the_agent_told() {
    let mut t = table();
    t.attach(ADA_CLIENT, "m1", "s1");
    assert_eq!(
        t.client_offline(ADA_CLIENT),
        vec![Effect::Unlink {
            agent: AGENT,
            client: ADA_CLIENT,
            session_id: "s1".into(),
            detach_agent: true,
            reply: false
        }]
    );
}

#[test]
fn an_agent_that_leaves_ends_its_sessions_and_goes_offline() {
    let mut t = table();
    t.attach(ADA_CLIENT, "m1", "s1");
    let effects = t.agent_offline(AGENT);
    assert!(effects.contains(&Effect::ToClient {
        conn: ADA_CLIENT,
        wire: ToClientWire::SessionEnded {
            machine_id: "m1".into(),
            session_id: "s1".into()
        }
    }));
    assert!(effects.contains(&Effect::ToClient {
        conn: ADA_CLIENT,
        wire: ToClientWire::MachineStatus {
            machine_id: "m1".into(),
            online: false
        }
    }));
    assert!(!effects.iter().any(|e| matches!(
        e,
        Effect::ToClient {
            conn: BOB_CLIENT,
            ..
        }
    )));
    assert_eq!(t.status(&["m1".into()])[0], Live::default());
}

#[test]
fn a_second_agent_replaces_the_first_whose_late_close_changes_nothing() {
    let mut t = table();
    let effects = t.agent_online(2, "m1", "ada");
    assert!(effects.contains(&Effect::DropAgent {
        conn: AGENT,
        revoked: false
    }));
    assert!(t.agent_offline(AGENT).is_empty());
    assert!(t.status(&["m1".into()])[0].online);
}

#[test]
fn deleting_a_machine_drops_its_agent() {
    let mut t = table();
    let effects = t.machine_deleted("m1");
    assert!(effects.contains(&Effect::DropAgent {
        conn: AGENT,
        revoked: true
    }));
    assert!(!t.status(&["m1".into()])[0].online);
}

#[test]
fn a_session_that_vanishes_from_a_new_list_ends_for_its_watchers() {
    let mut t = table();
    t.attach(ADA_CLIENT, "m1", "s1");
    let effects = t.agent_sessions(AGENT, vec![session("s2")]);
    assert!(effects.contains(&Effect::Unlink {
        agent: AGENT,
        client: ADA_CLIENT,
        session_id: "s1".into(),
        detach_agent: false,
        reply: false
    }));
    assert_eq!(
        errors(&t.detach(ADA_CLIENT, "s1")),
        [ErrorCode::NotAttached]
    );
}

#[test]
fn reported_sessions_are_bounded() {
    let mut t = table();
    let many = (0..1000).map(|i| session(&format!("s{i}"))).collect();
    t.agent_sessions(AGENT, many);
    assert_eq!(
        t.status(&["m1".into()])[0].session_count,
        MAX_SESSIONS_PER_AGENT
    );
    assert!(t.session_started(AGENT, session("extra")).is_empty());
}

#[test]
fn attachments_per_client_are_bounded() {
    let mut t = table();
    let many = (0..=MAX_ATTACHMENTS_PER_CLIENT)
        .map(|i| session(&format!("s{i}")))
        .collect();
    t.agent_sessions(AGENT, many);
    for i in 0..MAX_ATTACHMENTS_PER_CLIENT {
        assert!(errors(&t.attach(ADA_CLIENT, "m1", &format!("s{i}"))).is_empty());
    }
    let last = format!("s{MAX_ATTACHMENTS_PER_CLIENT}");
    assert_eq!(
        errors(&t.attach(ADA_CLIENT, "m1", &last)),
        [ErrorCode::InvalidMessage]
    );
}

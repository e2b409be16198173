//! Unit tests of the account-mode routing rules.

use super::*;

const AGENT: ConnId = ConnId::new(1);
const NEW_AGENT: ConnId = ConnId::new(2);
const ADA_CLIENT: ConnId = ConnId::new(10);
const ADA_OTHER_CLIENT: ConnId = ConnId::new(11);
const BOB_CLIENT: ConnId = ConnId::new(20);

fn m(id: &str) -> MachineId {
    MachineId::from(id)
}

fn s(id: &str) -> SessionId {
    SessionId::from(id)
}

fn u(id: &str) -> UserId {
    UserId::from(id)
}

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
    t.client_online(ADA_CLIENT, &u("ada"));
    t.client_online(BOB_CLIENT, &u("bob"));
    t.agent_online(AGENT, &m("m1"), &u("ada"), Instant::now())
        .unwrap();
    t.agent_sessions(AGENT, vec![session("s1")]);
    t
}

fn errors(effects: &[Effect]) -> Vec<ErrorCode> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::ClientError { code, .. } => Some(*code),
            _ => None,
        })
        .collect()
}

fn status(online: bool) -> ClientEvent<'static> {
    ClientEvent::MachineStatus {
        machine_id: Cow::Owned(m("m1")),
        online,
    }
}

#[test]
fn an_agent_coming_online_is_announced_to_its_users_clients_only() {
    let mut t = MachineTable::default();
    t.client_online(ADA_CLIENT, &u("ada"));
    t.client_online(BOB_CLIENT, &u("bob"));
    let effects = t
        .agent_online(AGENT, &m("m1"), &u("ada"), Instant::now())
        .unwrap();
    assert_eq!(
        effects,
        vec![Effect::ToClient {
            conn: ADA_CLIENT,
            event: status(true)
        }]
    );
    assert!(t.status(&[m("m1"), m("m2")])[0].online);
}

#[test]
fn another_users_client_gets_machine_not_found_for_everything() {
    let mut t = table();
    assert_eq!(
        errors(&t.list_sessions(BOB_CLIENT, &m("m1"))),
        [ErrorCode::MachineNotFound]
    );
    assert_eq!(
        errors(&t.attach(BOB_CLIENT, &m("m1"), &s("s1"))),
        [ErrorCode::MachineNotFound]
    );
    assert_eq!(
        errors(&t.create_session(BOB_CLIENT, &m("m1"), "x".into(), "y".into())),
        [ErrorCode::MachineNotFound]
    );
    // Exactly what an unknown machine gets: nothing tells the two apart.
    assert_eq!(
        t.attach(BOB_CLIENT, &m("m1"), &s("s1")),
        t.attach(BOB_CLIENT, &m("nope"), &s("s1"))
    );
}

#[test]
fn attach_links_agent_and_client_and_repeating_it_only_confirms() {
    let mut t = table();
    assert_eq!(
        t.attach(ADA_CLIENT, &m("m1"), &s("s1")),
        vec![Effect::Link {
            agent: AGENT,
            client: ADA_CLIENT,
            machine: m("m1"),
            session: s("s1"),
            relink: false
        }]
    );
    assert_eq!(
        t.attach(ADA_CLIENT, &m("m1"), &s("s1")),
        vec![Effect::ToClient {
            conn: ADA_CLIENT,
            event: ClientEvent::Attached {
                session_id: Cow::Owned(s("s1")),
                resumed: None
            }
        }]
    );
    assert_eq!(
        errors(&t.attach(ADA_CLIENT, &m("m1"), &s("s9"))),
        [ErrorCode::SessionNotFound]
    );
}

#[test]
fn listed_sessions_count_attached_clients() {
    let mut t = table();
    t.client_online(ADA_OTHER_CLIENT, &u("ada"));
    t.attach(ADA_CLIENT, &m("m1"), &s("s1"));
    t.attach(ADA_OTHER_CLIENT, &m("m1"), &s("s1"));
    match &t.list_sessions(ADA_CLIENT, &m("m1"))[0] {
        Effect::ToClient {
            event: ClientEvent::Sessions { sessions, .. },
            ..
        } => assert_eq!(sessions[0].attached_clients, 2),
        other => panic!("{other:?}"),
    }
}

#[test]
fn detach_without_attach_is_not_attached() {
    let mut t = table();
    assert_eq!(
        errors(&t.detach(ADA_CLIENT, &s("s1"))),
        [ErrorCode::NotAttached]
    );
    t.attach(ADA_CLIENT, &m("m1"), &s("s1"));
    assert_eq!(
        t.detach(ADA_CLIENT, &s("s1")),
        vec![Effect::Unlink {
            agent: AGENT,
            client: ADA_CLIENT,
            session: s("s1"),
            detach_agent: true,
            reply: true
        }]
    );
}

#[test]
fn a_client_that_leaves_is_detached_everywhere_and_the_agent_told() {
    let mut t = table();
    t.attach(ADA_CLIENT, &m("m1"), &s("s1"));
    assert_eq!(
        t.client_offline(ADA_CLIENT),
        vec![Effect::Unlink {
            agent: AGENT,
            client: ADA_CLIENT,
            session: s("s1"),
            detach_agent: true,
            reply: false
        }]
    );
}

#[test]
fn an_agent_that_leaves_ends_its_sessions_and_goes_offline() {
    let mut t = table();
    t.attach(ADA_CLIENT, &m("m1"), &s("s1"));
    let effects = t.agent_offline(AGENT);
    assert!(effects.contains(&Effect::ToClient {
        conn: ADA_CLIENT,
        event: ClientEvent::SessionEnded {
            machine_id: Cow::Owned(m("m1")),
            session_id: Cow::Owned(s("s1"))
        }
    }));
    assert!(effects.contains(&Effect::ToClient {
        conn: ADA_CLIENT,
        event: status(false)
    }));
    assert!(!effects.iter().any(|e| matches!(
        e,
        Effect::ToClient {
            conn: BOB_CLIENT,
            ..
        }
    )));
    assert_eq!(t.status(&[m("m1")])[0], Live::default());
}

#[test]
fn a_second_agent_replaces_the_first_whose_late_close_changes_nothing() {
    let mut t = table();
    let effects = t
        .agent_online(NEW_AGENT, &m("m1"), &u("ada"), Instant::now())
        .unwrap();
    assert_eq!(
        effects,
        vec![Effect::DropAgent {
            conn: AGENT,
            outcome: Outcome::Replaced
        }],
        "no session ends and no status flickers when an agent is replaced"
    );
    assert!(t.agent_offline(AGENT).is_empty());
    assert!(t.status(&[m("m1")])[0].online);
}

#[test]
fn a_replacement_agent_keeps_surviving_sessions_attached_and_ends_the_rest() {
    let mut t = table();
    t.agent_sessions(AGENT, vec![session("s1"), session("s2")]);
    t.attach(ADA_CLIENT, &m("m1"), &s("s1"));
    t.attach(ADA_CLIENT, &m("m1"), &s("s2"));
    t.agent_online(NEW_AGENT, &m("m1"), &u("ada"), Instant::now())
        .unwrap();
    // The new agent still runs s1, not s2.
    let effects = t.agent_sessions(NEW_AGENT, vec![session("s1")]);
    assert!(effects.contains(&Effect::Link {
        agent: NEW_AGENT,
        client: ADA_CLIENT,
        machine: m("m1"),
        session: s("s1"),
        relink: true
    }));
    assert!(effects.contains(&Effect::ToClient {
        conn: ADA_CLIENT,
        event: ClientEvent::SessionEnded {
            machine_id: Cow::Owned(m("m1")),
            session_id: Cow::Owned(s("s2"))
        }
    }));
    assert!(!effects.iter().any(|e| matches!(
        e,
        Effect::ToClient {
            event: ClientEvent::SessionEnded { session_id, .. },
            ..
        } if session_id.as_ref() == &s("s1")
    )));
    // Still attached to s1: detaching works and reaches the new agent.
    assert_eq!(
        t.detach(ADA_CLIENT, &s("s1")),
        vec![Effect::Unlink {
            agent: NEW_AGENT,
            client: ADA_CLIENT,
            session: s("s1"),
            detach_agent: true,
            reply: true
        }]
    );
    // A later list is an ordinary one: nothing is linked again.
    let effects = t.agent_sessions(NEW_AGENT, vec![session("s1")]);
    assert!(effects.is_empty(), "{effects:?}");
}

#[test]
fn deleting_a_machine_drops_its_agent() {
    let mut t = table();
    let effects = t.machine_deleted(&m("m1"), Instant::now());
    assert!(effects.contains(&Effect::DropAgent {
        conn: AGENT,
        outcome: Outcome::Refused
    }));
    assert!(!t.status(&[m("m1")])[0].online);
}

#[test]
fn a_machine_deleted_while_its_agent_authenticates_never_comes_online() {
    let now = Instant::now();
    let mut t = MachineTable::default();
    t.client_online(ADA_CLIENT, &u("ada"));
    // The token was checked, then the machine was deleted before the agent reported in.
    assert!(t.machine_deleted(&m("m1"), now).is_empty());
    assert_eq!(
        t.agent_online(AGENT, &m("m1"), &u("ada"), now),
        Err(MachineDeleted)
    );
    assert!(!t.status(&[m("m1")])[0].online);
    // Long after, the memory of the deletion is gone (the token no longer verifies anyway).
    let later = now + DELETED_MEMORY;
    assert!(t.agent_online(AGENT, &m("m1"), &u("ada"), later).is_ok());
}

#[test]
fn a_session_that_vanishes_from_a_new_list_ends_for_its_watchers() {
    let mut t = table();
    t.attach(ADA_CLIENT, &m("m1"), &s("s1"));
    let effects = t.agent_sessions(AGENT, vec![session("s2")]);
    assert!(effects.contains(&Effect::Unlink {
        agent: AGENT,
        client: ADA_CLIENT,
        session: s("s1"),
        detach_agent: false,
        reply: false
    }));
    assert_eq!(
        errors(&t.detach(ADA_CLIENT, &s("s1"))),
        [ErrorCode::NotAttached]
    );
}

#[test]
fn reported_sessions_are_bounded() {
    let mut t = table();
    let many = (0..1000).map(|i| session(&format!("s{i}"))).collect();
    t.agent_sessions(AGENT, many);
    assert_eq!(
        t.status(&[m("m1")])[0].session_count,
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
        assert!(errors(&t.attach(ADA_CLIENT, &m("m1"), &s(&format!("s{i}")))).is_empty());
    }
    let last = s(&format!("s{MAX_ATTACHMENTS_PER_CLIENT}"));
    assert_eq!(
        errors(&t.attach(ADA_CLIENT, &m("m1"), &last)),
        [ErrorCode::InvalidMessage]
    );
}

fn set(conns: &[ConnId]) -> HashSet<ConnId> {
    conns.iter().copied().collect()
}

#[test]
fn a_user_handed_over_carries_on_where_it_was_left() {
    // On the leaving node: Ada's agent and client, the client attached to s1.
    let mut leaving = table();
    leaving.attach(ADA_CLIENT, &m("m1"), &s("s1"));
    let records = leaving.export(&set(&[AGENT]), &set(&[ADA_CLIENT, BOB_CLIENT]));
    let ada = records.iter().find(|r| r.user == u("ada")).unwrap().clone();
    assert_eq!(ada.agents.len(), 1);
    assert_eq!(
        ada.clients[0].attached,
        vec![(s("s1"), m("m1"))],
        "the attachment goes with the client"
    );
    let bob = records.iter().find(|r| r.user == u("bob")).unwrap();
    assert!(bob.agents.is_empty() && bob.clients[0].attached.is_empty());

    // On the adopting node: installed whole, the client still attached and counted.
    let mut adopting = MachineTable::default();
    let installed = adopting.import(ada.clone(), Instant::now());
    assert_eq!(installed, ada);
    assert!(adopting.status(&[m("m1")])[0].online);
    let listed = adopting.list_sessions(ADA_CLIENT, &m("m1"));
    let Effect::ToClient {
        event: ClientEvent::Sessions { sessions, .. },
        ..
    } = &listed[0]
    else {
        panic!("{listed:?}")
    };
    assert_eq!(sessions[0].attached_clients, 1);

    // The agent comes back on a new connection: it replaces the one handed over, and its
    // first list relinks the attachment without the client being told anything.
    let effects = adopting
        .agent_online(NEW_AGENT, &m("m1"), &u("ada"), Instant::now())
        .unwrap();
    assert!(effects.contains(&Effect::DropAgent {
        conn: AGENT,
        outcome: Outcome::Replaced
    }));
    let effects = adopting.agent_sessions(NEW_AGENT, vec![session("s1")]);
    assert!(effects.contains(&Effect::Link {
        agent: NEW_AGENT,
        client: ADA_CLIENT,
        machine: m("m1"),
        session: s("s1"),
        relink: true,
    }));
    // Ownership holds on the adopting node as on any: Bob reaches nothing of Ada's.
    adopting.client_online(BOB_CLIENT, &u("bob"));
    assert_eq!(
        errors(&adopting.attach(BOB_CLIENT, &m("m1"), &s("s1"))),
        vec![ErrorCode::MachineNotFound]
    );
}

#[test]
fn a_hand_over_never_overrides_what_the_adopting_node_has() {
    let mut leaving = table();
    leaving.attach(ADA_CLIENT, &m("m1"), &s("s1"));
    let ada = leaving
        .export(&set(&[AGENT]), &set(&[ADA_CLIENT]))
        .remove(0);

    // m1 came online here first: its agent stays, and the client is handed over without
    // an attachment to a session it cannot be linked to.
    let mut adopting = MachineTable::default();
    adopting
        .agent_online(NEW_AGENT, &m("m1"), &u("ada"), Instant::now())
        .unwrap();
    adopting.agent_sessions(NEW_AGENT, vec![session("s1")]);
    let installed = adopting.import(ada.clone(), Instant::now());
    assert!(installed.agents.is_empty());
    assert_eq!(installed.clients.len(), 1);
    assert!(installed.clients[0].attached.is_empty());

    // A deleted machine is not brought back; a connection id in use is not taken.
    let mut deleted = MachineTable::default();
    deleted.machine_deleted(&m("m1"), Instant::now());
    deleted.client_online(ADA_CLIENT, &u("ada"));
    let installed = deleted.import(ada, Instant::now());
    assert!(installed.agents.is_empty() && installed.clients.is_empty());
    assert!(!deleted.status(&[m("m1")])[0].online);
}

//! Account-mode helpers: a user with a machine, its agent, a signed-in client.

use std::time::Duration;

use reqwest::Client;
use serde_json::{json, Value};

use super::*;

/// A user with one machine: the user's access token, the machine id and its token.
pub struct Owner {
    pub access: String,
    pub machine_id: String,
    pub machine_token: String,
}

pub async fn owner(server: &impl RelayPort, email: &str) -> Owner {
    let http = Client::new();
    let body: Value = http
        .post(url_of(server, "/auth/register"))
        .json(&json!({"email": email, "password": "correct horse battery"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let access = body["accessToken"].as_str().unwrap().to_owned();
    let created: Value = http
        .post(url_of(server, "/api/machines"))
        .bearer_auth(&access)
        .json(&json!({"name": format!("{email}'s mac")}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    Owner {
        access,
        machine_id: created["machine"]["id"].as_str().unwrap().to_owned(),
        machine_token: created["token"].as_str().unwrap().to_owned(),
    }
}

pub fn session(id: &str) -> Value {
    json!({"id": id, "name": format!("shell {id}"), "command": "/bin/zsh",
           "createdAt": "2026-11-22T10:00:00Z", "attachedClients": 0})
}

/// An agent registered for the owner's machine, having reported `sessions`.
pub async fn agent(server: &impl RelayPort, owner: &Owner, sessions: &[&str]) -> Ws {
    let mut ws = connect_to(server, "/ws/agent").await;
    send(
        &mut ws,
        json!({"type": "register", "token": owner.machine_token, "machineName": "mac"}),
    )
    .await;
    let registered = recv(&mut ws).await;
    assert_eq!(
        registered,
        json!({"type": "registered", "success": true, "machineId": owner.machine_id})
    );
    assert_eq!(recv(&mut ws).await, json!({"type": "list_sessions"}));
    let list: Vec<Value> = sessions.iter().map(|id| session(id)).collect();
    send(&mut ws, json!({"type": "sessions", "sessions": list})).await;
    // The report reaches the registry through the agent's actor; a client's request comes
    // through its own. Wait until the registry has it, as a real client would list first.
    let count = sessions.len();
    eventually_machine(server, owner, |m| {
        m["online"] == true && m["sessionCount"] == count
    })
    .await;
    ws
}

/// A client authenticated with the owner's access token.
pub async fn client(server: &impl RelayPort, access: &str) -> Ws {
    let mut ws = connect_to(server, "/ws/client").await;
    send(&mut ws, json!({"type": "auth", "token": access})).await;
    let msg = recv(&mut ws).await;
    assert_eq!(msg["type"], "authenticated", "{msg}");
    ws
}

/// Receives messages until one of `kind`, skipping the relay's JSON pings and anything else.
pub async fn recv_type(ws: &mut Ws, kind: &str) -> Value {
    tokio::time::timeout(WAIT, async {
        loop {
            let msg = recv(ws).await;
            if msg["type"] == kind {
                return msg;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {kind} message in time"))
}

pub async fn attach(client: &mut Ws, owner: &Owner, session_id: &str) {
    send(
        client,
        json!({"type": "attach", "machineId": owner.machine_id, "sessionId": session_id}),
    )
    .await;
    assert_eq!(
        recv_type(client, "attached").await,
        json!({"type": "attached", "sessionId": session_id})
    );
}

pub async fn machines_of(server: &impl RelayPort, access: &str) -> Value {
    Client::new()
        .get(url_of(server, "/api/machines"))
        .bearer_auth(access)
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap()["machines"]
        .clone()
}

/// Waits until the REST view of the owner's machine satisfies `check` (the registry is
/// updated by messages, so status follows a connection by a moment).
pub async fn eventually_machine(
    server: &impl RelayPort,
    owner: &Owner,
    check: impl Fn(&Value) -> bool,
) -> Value {
    for _ in 0..100 {
        let machines = machines_of(server, &owner.access).await;
        if check(&machines[0]) {
            return machines[0].clone();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("machine never reached the expected state");
}

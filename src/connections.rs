//! Every open WebSocket: counted per client address (the per-address limit), per endpoint
//! (metrics), and reachable all at once for a graceful shutdown (close 1001 to each).

use crate::ids::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};

use actix_http::ws::CloseCode;

use crate::audit;
use crate::ids::{ConnId, Endpoint};
use crate::limits::AddressKey;
use crate::metrics::METRICS;
use crate::transport::{KillSwitch, Outbox, CLOSE_LINGER};

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// `limits.max_connections_per_ip` reached for this address.
    #[error("too many connections from this address")]
    TooMany,
    /// The relay is shutting down.
    #[error("the relay is shutting down")]
    ShuttingDown,
}

/// The open connections of this process.
#[derive(Debug)]
pub struct Connections {
    /// `limits.max_connections_per_ip`; a reload changes it for new connections.
    max_per_address: AtomicUsize,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Open connections per address; entries exist only while non-zero.
    per_address: HashMap<AddressKey, usize>,
    /// Addresses refused since they last fell below the limit: audited once per streak.
    /// A subset of `per_address`'s keys, so bounded by it.
    tripped: HashSet<AddressKey>,
    /// How to close each one at shutdown.
    open: HashMap<ConnId, (Arc<Outbox>, Arc<KillSwitch>)>,
    shutting_down: bool,
}

/// One admitted connection; dropping it (with its actor) releases its place.
#[derive(Debug)]
pub struct Admission {
    connections: Arc<Connections>,
    key: AddressKey,
    /// The connection's id for the rest of its life.
    pub conn: ConnId,
    /// Its endpoint.
    pub endpoint: Endpoint,
    /// Its client address.
    pub ip: IpAddr,
    /// A virtual connection's (see `relay::tunnel`): set when its side's own node left,
    /// so it is taken for moved rather than lost.
    moved: Option<Arc<AtomicBool>>,
}

impl Connections {
    /// Admits at most `max_per_address` connections per address.
    pub fn new(max_per_address: usize) -> Arc<Self> {
        Arc::new(Self {
            max_per_address: AtomicUsize::new(max_per_address),
            state: Mutex::default(),
        })
    }

    /// Admits at most `max_per_address` per address from now on (open ones stay open).
    pub fn set_max_per_address(&self, max_per_address: usize) {
        self.max_per_address.store(max_per_address, Relaxed);
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Admits a connection from `ip` to `endpoint`, or says why not.
    pub fn admit(self: &Arc<Self>, ip: IpAddr, endpoint: Endpoint) -> Result<Admission, Refused> {
        let key = AddressKey::from(ip);
        let mut state = self.lock();
        if state.shutting_down {
            return Err(Refused::ShuttingDown);
        }
        let count = state.per_address.entry(key).or_default();
        if *count >= self.max_per_address.load(Relaxed) {
            if *count == 0 {
                state.per_address.remove(&key);
            } else if state.tripped.insert(key) {
                audit::event("rate_limited")
                    .client(ip)
                    .reason("connections")
                    .record();
            }
            METRICS
                .rate_limited
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Err(Refused::TooMany);
        }
        *count += 1;
        drop(state);
        METRICS.connection(endpoint, 1);
        Ok(Admission {
            connections: Arc::clone(self),
            key,
            conn: ConnId::next(),
            endpoint,
            ip,
            moved: None,
        })
    }

    /// Connections open now.
    pub fn open_count(&self) -> usize {
        self.lock().open.len()
    }

    /// Whether [`Self::close_all`] was called: the node is going away.
    pub fn shutting_down(&self) -> bool {
        self.lock().shutting_down
    }

    /// Sends every open connection a close frame (1001, going away), cuts each after
    /// [`CLOSE_LINGER`], and admits no more.
    pub fn close_all(&self) {
        let open: Vec<_> = {
            let mut state = self.lock();
            state.shutting_down = true;
            state.open.values().cloned().collect()
        };
        tracing::info!(
            connections = open.len(),
            "closing every connection (going away)"
        );
        for (outbox, kill) in open {
            outbox.close(Some((CloseCode::Away, "server shutting down").into()));
            actix_rt::spawn(async move {
                actix_rt::time::sleep(CLOSE_LINGER).await;
                kill.kill();
            });
        }
    }
}

impl Admission {
    /// Whether this node is going away (its connections are being closed with 1001).
    pub fn node_leaving(&self) -> bool {
        self.connections.shutting_down()
    }

    /// For a virtual connection: the flag that says its side's own node left.
    pub fn watch_moves(&mut self) -> Arc<AtomicBool> {
        Arc::clone(self.moved.get_or_insert_with(Arc::default))
    }

    /// Whether its side's own node left (see [`Self::watch_moves`]).
    pub fn side_moved(&self) -> bool {
        self.moved.as_ref().is_some_and(|moved| moved.load(Relaxed))
    }

    /// Makes the connection reachable by [`Connections::close_all`].
    pub fn track(&self, outbox: Arc<Outbox>, kill: Arc<KillSwitch>) {
        self.connections
            .lock()
            .open
            .insert(self.conn, (outbox, kill));
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        let mut state = self.connections.lock();
        state.open.remove(&self.conn);
        if let Some(count) = state.per_address.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                state.per_address.remove(&self.key);
            }
            state.tripped.remove(&self.key);
        }
        drop(state);
        METRICS.connection(self.endpoint, -1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_per_address_are_bounded_and_released_on_drop() {
        let connections = Connections::new(2);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let a = connections.admit(ip, Endpoint::Mac).unwrap();
        let _b = connections.admit(ip, Endpoint::Mac).unwrap();
        assert_eq!(
            connections.admit(ip, Endpoint::Mac).unwrap_err(),
            Refused::TooMany
        );
        assert!(connections
            .admit("192.0.2.2".parse().unwrap(), Endpoint::Mac)
            .is_ok());
        drop(a);
        assert!(connections.admit(ip, Endpoint::Mac).is_ok());
    }

    #[test]
    fn nothing_is_admitted_after_shutdown_begins() {
        let connections = Connections::new(2);
        connections.lock().shutting_down = true;
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(
            connections.admit(ip, Endpoint::Browser).unwrap_err(),
            Refused::ShuttingDown
        );
    }
}

//! A side tunnelled to the node of its code or pairing (see `relay::pairing::remote`): what
//! it sends goes there as is, and what that node answers comes back through here.

use std::time::Instant;

use actix::AsyncContext;
use bytes::Bytes;

use super::{PairSocket, REGISTRY_TIMEOUT};
use crate::ids::{Departure, NodeId, Outcome, Role};
use crate::relay::pairing::registry::{Reissue, Release};
use crate::relay::pairing::remote;
use crate::relay::protocol::pairing::PairingEvent;
use crate::relay::protocol::ErrorCode;
use crate::relay::socket::{Connection, Ctx};
use crate::relay::tunnel::{Gateway, RemoteEvent};

impl Connection<PairSocket> {
    /// The side's code or pairing lives on `home`: from now on it is tunnelled there,
    /// starting with its message `first`. A mac leaves this node's registry first (its code
    /// here is withdrawn), unless a browser paired with it here meanwhile.
    pub(super) fn tunnel(&mut self, home: NodeId, first: Vec<u8>, ctx: &mut Ctx<PairSocket>) {
        if self.proto.role == Role::Browser {
            return self.open_tunnel(home, first, ctx);
        }
        let release = Release {
            conn: self.socket.conn,
        };
        let released = self
            .proto
            .node
            .registry
            .send(release)
            .timeout(REGISTRY_TIMEOUT);
        self.wait_for(
            released,
            move |conn, released, ctx| match released {
                Ok(true) => conn.open_tunnel(home, first, ctx),
                Ok(false) => {
                    let message = "register is only allowed while unpaired";
                    conn.error(ErrorCode::InvalidMessage, message, ctx)
                }
                Err(_) => {
                    let message = "the relay is busy; try again shortly";
                    conn.error(ErrorCode::RateLimited, message, ctx)
                }
            },
            ctx,
        );
    }

    fn open_tunnel(&mut self, home: NodeId, first: Vec<u8>, ctx: &mut Ctx<PairSocket>) {
        let Some(remote) = self.proto.node.remote.clone() else {
            return;
        };
        let (peer, role, ip) = (self.peer(ctx), self.proto.role, self.socket.client_ip());
        match remote.open(&home, peer, role, ip, &first) {
            Ok(route) => {
                self.proto.gateway = Some(Box::new(Gateway {
                    home,
                    route,
                    joined: false,
                }));
                if role == Role::Mac {
                    // Its home watches it for idleness now.
                    self.proto.unpaired_since = None;
                }
            }
            Err(err) => {
                tracing::debug!(conn = %self.socket.conn, %err, "could not reach the home node");
                let message = "the relay cannot reach the node of that code or pairing; try again";
                self.error(ErrorCode::Unavailable, message, ctx);
                self.back_here(ctx);
            }
        }
    }

    /// A tunnelled side's message goes to its home as is.
    pub(super) fn tunnel_up(&mut self, home: NodeId, text: Bytes, ctx: &mut Ctx<PairSocket>) {
        let (Some(remote), Some(gateway)) = (&self.proto.node.remote, &self.proto.gateway) else {
            return;
        };
        if remote.up(&home, &gateway.route, text).is_err() {
            self.finish(Outcome::Unavailable, ctx);
        }
    }

    /// What the home of a tunnelled side sends it. The gateway watches the answers that
    /// matter to it: `joined`; for a browser, an `error` before `joined` (the join or resume
    /// failed there) and the end of the pairing, after either of which the browser is this
    /// node's again. A mac stays tunnelled: its home gives it its next code.
    pub(super) fn on_remote(&mut self, event: RemoteEvent, ctx: &mut Ctx<PairSocket>) {
        let browser = self.proto.role == Role::Browser;
        let Some(gateway) = &mut self.proto.gateway else {
            return;
        };
        match event {
            RemoteEvent::Text(text) => {
                if text.starts_with(br#"{"type":"joined""#) {
                    gateway.joined = true;
                    self.proto.unpaired_since = None;
                } else if text.starts_with(br#"{"type":"error""#) {
                    let ends = remote::ends_pairing(&text);
                    if browser && (!gateway.joined || ends) {
                        if let (Some(gateway), Some(remote)) =
                            (self.proto.gateway.take(), &self.proto.node.remote)
                        {
                            remote.close(&gateway.home, &gateway.route, Departure::Clean);
                        }
                        self.back_here(ctx);
                    } else if ends {
                        gateway.joined = false;
                    }
                }
                self.pass_down(&text, ctx);
            }
            RemoteEvent::Closed(close) => {
                if !self.closed_by_home(close, ctx) {
                    self.proto.gateway = None;
                }
            }
            RemoteEvent::HomeLost => {
                let joined = gateway.joined;
                self.proto.gateway = None;
                self.home_lost(joined, ctx);
            }
        }
    }

    /// The home of the side's code or pairing went away. A paired side's partner is as
    /// lost: the resume grace runs (what the side sends meanwhile is dropped, as it would
    /// be held for a partner that never comes back), then it hears `MAC_DISCONNECTED` /
    /// `BROWSER_DISCONNECTED`. Either way it is then this node's again (a mac gets a code).
    fn home_lost(&mut self, joined: bool, ctx: &mut Ctx<PairSocket>) {
        let (code, message) = match self.proto.role {
            Role::Browser => (ErrorCode::MacDisconnected, "the mac disconnected"),
            Role::Mac => (ErrorCode::BrowserDisconnected, "the browser disconnected"),
        };
        if !joined {
            if self.proto.role == Role::Browser {
                let message = "the node of that code went away; try again";
                self.error(ErrorCode::Unavailable, message, ctx);
            }
            return self.back_here(ctx);
        }
        self.proto.orphaned = true;
        self.proto.unpaired_since = None;
        let grace = self.settings.pairing.resume_grace();
        ctx.run_later(grace, move |conn, ctx| {
            conn.proto.orphaned = false;
            conn.error(code, message, ctx);
            conn.back_here(ctx);
        });
    }

    /// The side is this node's again, unpaired: a mac gets a code here.
    fn back_here(&mut self, ctx: &mut Ctx<PairSocket>) {
        self.proto.unpaired_since = Some(Instant::now());
        self.rearm(ctx);
        if self.proto.role == Role::Mac {
            self.connect_here(true, ctx);
        }
    }

    /// In a cluster, a mac's new code is recorded cluster-wide before the mac hears it; a
    /// code another node holds is replaced by a fresh one.
    pub(super) fn registered(&mut self, code: String, expires_at: u64, ctx: &mut Ctx<PairSocket>) {
        let Some(remote) = self.proto.node.remote.clone() else {
            return self.send(
                &PairingEvent::Registered {
                    code: &code,
                    expires_at,
                },
                ctx,
            );
        };
        let typed = code.clone();
        let claim = async move { remote.claim(&typed).await };
        self.wait_for(
            claim,
            move |conn, claimed, ctx| match claimed {
                Ok(true) => conn.send(
                    &PairingEvent::Registered {
                        code: &code,
                        expires_at,
                    },
                    ctx,
                ),
                Ok(false) => {
                    let reissue = Reissue {
                        conn: conn.socket.conn,
                    };
                    conn.ask(reissue, ctx);
                }
                Err(err) => {
                    tracing::warn!(%err, "could not record a code in the cluster");
                    let message = "the relay cannot reach its cluster; send register to try again";
                    conn.error(ErrorCode::Unavailable, message, ctx);
                }
            },
            ctx,
        );
    }
}

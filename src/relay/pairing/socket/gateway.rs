//! A browser tunnelled to the node of its code (see `relay::pairing::remote`): what it
//! sends goes there as is, and what that node answers comes back through here.

use std::time::Instant;

use bytes::Bytes;

use super::{Gateway, PairSocket};
use crate::ids::{NodeId, Outcome};
use crate::relay::pairing::command::RemoteEvent;
use crate::relay::pairing::registry::Reissue;
use crate::relay::pairing::remote;
use crate::relay::protocol::pairing::PairingEvent;
use crate::relay::protocol::ErrorCode;
use crate::relay::socket::{Connection, Ctx};

impl Connection<PairSocket> {
    /// `join` a code of another node: from now on this browser is tunnelled there.
    pub(super) fn tunnel(
        &mut self,
        home: NodeId,
        code: &str,
        ack: bool,
        ctx: &mut Ctx<PairSocket>,
    ) {
        let Some(remote) = self.proto.remote.clone() else {
            return;
        };
        let first = remote::join_text(code, ack);
        match remote.open(&home, self.peer(ctx), self.socket.client_ip(), &first) {
            Ok(route) => {
                self.proto.gateway = Some(Gateway {
                    home,
                    route,
                    joined: false,
                })
            }
            Err(err) => {
                tracing::debug!(conn = %self.socket.conn, %err, "could not reach the code's node");
                let message = "the relay cannot reach the node of that code; try again";
                self.error(ErrorCode::Unavailable, message, ctx);
            }
        }
    }

    /// A tunnelled browser's message goes to its home as is.
    pub(super) fn tunnel_up(&mut self, home: NodeId, text: Bytes, ctx: &mut Ctx<PairSocket>) {
        let (Some(remote), Some(gateway)) = (&self.proto.remote, &self.proto.gateway) else {
            return;
        };
        if remote.up(&home, &gateway.route, text).is_err() {
            self.finish(Outcome::Unavailable, ctx);
        }
    }

    /// What the home of a tunnelled browser sends it. The gateway watches the answers
    /// that end the tunnel: an `error` before `joined` (the join failed there), and the
    /// end of the pairing; after either the browser is this node's again.
    pub(super) fn on_remote(&mut self, event: RemoteEvent, ctx: &mut Ctx<PairSocket>) {
        let Some(gateway) = &mut self.proto.gateway else {
            return;
        };
        match event {
            RemoteEvent::Text(text) => {
                if text.starts_with(br#"{"type":"joined""#) {
                    gateway.joined = true;
                    self.proto.unpaired_since = None;
                } else if text.starts_with(br#"{"type":"error""#)
                    && (!gateway.joined || remote::ends_pairing(&text))
                {
                    if let (Some(gateway), Some(remote)) =
                        (self.proto.gateway.take(), &self.proto.remote)
                    {
                        remote.close(&gateway.home, &gateway.route, true);
                    }
                    self.proto.unpaired_since = Some(Instant::now());
                    self.rearm(ctx);
                }
                let frame =
                    crate::transport::text_frame_of(text.len(), |buf| buf.extend_from_slice(&text));
                if let Err(outcome) = self.socket.push(frame) {
                    self.finish(outcome, ctx);
                }
            }
            RemoteEvent::Closed(close) => {
                self.proto.gateway = None;
                let outcome = match close {
                    Some((code, reason)) => {
                        self.socket.link.close(code.into(), &reason);
                        Outcome::ALL
                            .into_iter()
                            .find(|outcome| outcome.as_str() == reason)
                            .unwrap_or(Outcome::PeerClosed)
                    }
                    None => Outcome::Lost,
                };
                self.finish(outcome, ctx);
            }
        }
    }

    /// In a cluster, a mac's new code is recorded cluster-wide before the mac hears it; a
    /// code another node holds is replaced by a fresh one.
    pub(super) fn registered(&mut self, code: String, expires_at: u64, ctx: &mut Ctx<PairSocket>) {
        let Some(remote) = self.proto.remote.clone() else {
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

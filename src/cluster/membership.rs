//! Who is in the cluster: this node's heartbeat, the other nodes' heartbeats, and whether
//! this node reaches Redis at all.
//!
//! Every `cluster.heartbeat_ms` a node writes `<prefix>:node:<id>` = `up <link address>
//! <link secret>` (see [`super::link`]) with a time to live of `cluster.node_timeout_secs`
//! and adds itself to the set `<prefix>:nodes`; then it
//! reads the heartbeat of every node in the set and of every node it knew. A key that is
//! gone is a node that stopped heartbeating (killed, or cut from Redis): `NodeDown`, seen
//! by every node within `node_timeout_secs` + one heartbeat. A key that says `left` is a
//! node that shut down gracefully ([`super::Cluster::leave`]): `NodeLeft`. Each node
//! compares with what *it* knew, so every node reports every change once, whichever of
//! them removes the dead node from the set first.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use fred::prelude::*;

use super::inbox::ClusterEvent;
use super::peers::Advert;
use super::{Cluster, ClusterError};
use crate::ids::NodeId;
use crate::metrics::METRICS;

/// The heartbeat's value once the node left gracefully.
pub(super) const LEFT: &str = "left";

/// One heartbeat: refresh this node's key, then compare the cluster with what was known.
/// Reports `Lost` / `Rejoined` when reaching Redis changes.
pub(super) async fn beat(cluster: &Arc<Cluster>) {
    let result = async {
        refresh(cluster).await?;
        cluster.ensure_subscribed().await?;
        survey(cluster).await
    }
    .await;
    let healthy = result.is_ok();
    if let Err(err) = &result {
        tracing::debug!(%err, "cluster heartbeat failed");
    }
    let was = cluster.healthy.swap(healthy, Relaxed);
    METRICS.cluster.set_up(healthy);
    match (was, healthy) {
        (true, false) => {
            tracing::warn!(node = %cluster.node, "lost Redis: cut off from the cluster");
            cluster.event(ClusterEvent::Lost);
        }
        (false, true) if cluster.ever_healthy.swap(true, Relaxed) => {
            tracing::info!(node = %cluster.node, "reached Redis again: back in the cluster");
            cluster.event(ClusterEvent::Rejoined);
        }
        (false, true) => tracing::info!(node = %cluster.node, "joined the cluster"),
        _ => {}
    }
}

/// Writes this node's heartbeat and membership.
async fn refresh(cluster: &Cluster) -> Result<(), ClusterError> {
    let ttl = Expiration::PX(cluster.settings.node_timeout().as_millis() as i64);
    let key = cluster.node_key(&cluster.node);
    let client = &cluster.client;
    let value = cluster.links.own().map_err(ClusterError::Link)?.heartbeat();
    cluster
        .timed(client.set::<(), _, _>(key, value, Some(ttl), None, false))
        .await?;
    cluster
        .timed(client.sadd::<(), _, _>(cluster.key(&["nodes"]), cluster.node.as_str()))
        .await
}

/// Compares the nodes alive in Redis with those known, reporting each change.
async fn survey(cluster: &Cluster) -> Result<(), ClusterError> {
    let client = &cluster.client;
    let members: Vec<String> = cluster
        .timed(client.smembers(cluster.key(&["nodes"])))
        .await?;
    let mut candidates: BTreeSet<NodeId> = members
        .iter()
        .filter_map(|member| NodeId::parse(member))
        .collect();
    candidates.extend(cluster.lock_known().iter().cloned());
    candidates.remove(&cluster.node);
    if candidates.is_empty() {
        return Ok(());
    }
    let candidates: Vec<NodeId> = candidates.into_iter().collect();
    let keys: Vec<String> = candidates.iter().map(|n| cluster.node_key(n)).collect();
    let states: Vec<Option<String>> = cluster.timed(client.mget(keys)).await?;
    let mut gone = Vec::new();
    for (node, state) in candidates.into_iter().zip(states) {
        let advert = state.as_deref().and_then(Advert::parse);
        let alive = advert.is_some();
        cluster.links.seen(&node, advert);
        let event = {
            let mut known = cluster.lock_known();
            match state.as_deref() {
                Some(_) if alive => known
                    .insert(node.clone())
                    .then_some(ClusterEvent::NodeUp(node)),
                Some(_) => {
                    gone.push(node.clone());
                    known.remove(&node).then_some(ClusterEvent::NodeLeft(node))
                }
                None => {
                    gone.push(node.clone());
                    known.remove(&node).then_some(ClusterEvent::NodeDown(node))
                }
            }
        };
        if let Some(event) = event {
            if let ClusterEvent::NodeDown(node) | ClusterEvent::NodeLeft(node) = &event {
                cluster.links.forget(node);
            }
            tracing::info!(?event, "cluster membership changed");
            cluster.event(event);
        }
    }
    if !gone.is_empty() {
        let gone: Vec<&str> = gone.iter().map(NodeId::as_str).collect();
        cluster
            .timed(client.srem::<(), _, _>(cluster.key(&["nodes"]), gone))
            .await?;
    }
    Ok(())
}

/// Marks this node as gone on purpose, so the others report `NodeLeft`, not `NodeDown`.
pub(super) async fn leave(cluster: &Cluster) -> Result<(), ClusterError> {
    let ttl = Expiration::PX(cluster.settings.node_timeout().as_millis() as i64);
    let client = &cluster.client;
    cluster
        .timed(client.set::<(), _, _>(
            cluster.node_key(&cluster.node),
            LEFT,
            Some(ttl),
            None,
            false,
        ))
        .await?;
    cluster
        .timed(client.srem::<(), _, _>(cluster.key(&["nodes"]), cluster.node.as_str()))
        .await
}

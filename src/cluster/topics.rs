//! Which inbox reads what: each topic's one reader gets the envelopes whose kind starts
//! with its name, and every inbox hears the cluster's events and lost routes. Apart from
//! `inbox.rs` so that the inbox itself knows nothing of the [`Cluster`] (no import circle).

use std::sync::Arc;

use super::inbox::{ClusterEvent, Inbound, Inbox};
use super::{lock, Cluster, Direct};

impl Cluster {
    /// The inbox of `topic`: the envelopes other nodes sent whose kind starts with
    /// `topic.`, and every [`ClusterEvent`] from now on. Each topic has one reader: the
    /// first call gets it, later calls `None`.
    pub fn inbox(&self, topic: &str) -> Option<Arc<Inbox>> {
        let mut inboxes = lock(&self.inboxes);
        if inboxes.iter().any(|(taken, _)| taken == topic) {
            return None;
        }
        let inbox = Inbox::new(self.settings.max_inbox_bytes);
        inboxes.push((topic.to_owned(), Arc::clone(&inbox)));
        Some(inbox)
    }

    /// Has `handler` take the envelopes of `topic` that arrive on lanes other than 0, on
    /// the thread that reads the lane (a worker's), instead of its inbox — and the
    /// [`ClusterEvent::Broken`] of such a lane, before anything its new link carries. The
    /// topic's inbox still gets everything else: lane 0, the events, the lost routes. The
    /// first call for a topic sets it: false for a later one.
    pub fn direct(&self, topic: &str, handler: Direct) -> bool {
        let mut direct = lock(&self.direct);
        if direct.iter().any(|(taken, _)| taken == topic) {
            return false;
        }
        direct.push((topic.to_owned(), handler));
        true
    }

    /// The handler of the topic of `kind`, if it has one.
    pub(super) fn direct_of(&self, kind: &str) -> Option<Direct> {
        let topic = kind.split_once('.').map_or(kind, |(topic, _)| topic);
        lock(&self.direct)
            .iter()
            .find(|(taken, _)| taken == topic)
            .map(|(_, handler)| Arc::clone(handler))
    }

    /// Has every topic's handler of lanes handle `event`, here and now.
    pub(super) fn direct_event(&self, event: ClusterEvent) {
        let handlers: Vec<Direct> = lock(&self.direct)
            .iter()
            .map(|(_, handler)| Arc::clone(handler))
            .collect();
        for handler in handlers {
            handler(Inbound::Event(event.clone()));
        }
    }

    /// The inbox of the topic of `kind`, if someone reads it.
    pub(super) fn inbox_of(&self, kind: &str) -> Option<Arc<Inbox>> {
        let topic = kind.split_once('.').map_or(kind, |(topic, _)| topic);
        lock(&self.inboxes)
            .iter()
            .find(|(taken, _)| taken == topic)
            .map(|(_, inbox)| Arc::clone(inbox))
    }

    /// Tells every inbox of `event`.
    pub(super) fn event(&self, event: ClusterEvent) {
        for (_, inbox) in lock(&self.inboxes).iter() {
            inbox.event(event.clone());
        }
    }

    /// Reports a lost envelope of `kind` and `route` (`None`: of unknown ones: all).
    pub(super) fn lost(&self, lost: Option<(&str, String)>) {
        match lost {
            Some((kind, route)) => {
                if let Some(inbox) = self.inbox_of(kind) {
                    inbox.lost(route);
                }
            }
            None => {
                for (_, inbox) in lock(&self.inboxes).iter() {
                    inbox.lost_everything();
                }
            }
        }
    }
}

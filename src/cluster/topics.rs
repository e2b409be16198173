//! Which inbox reads what: each topic's one reader gets the envelopes whose kind starts
//! with its name, and every inbox hears the cluster's events and lost routes. Apart from
//! `inbox.rs` so that the inbox itself knows nothing of the [`Cluster`] (no import circle).

use std::sync::Arc;

use super::inbox::{ClusterEvent, Inbox};
use super::{lock, Cluster};

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

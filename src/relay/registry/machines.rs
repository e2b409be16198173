//! Account mode's routing table: which agent holds which machine and the sessions it
//! reports. Plain state and methods, like the pairing table.

use std::collections::HashMap;

use super::pairings::ConnId;

/// Live state of one machine, as the REST API and clients see it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Live {
    /// An agent is connected for it.
    pub online: bool,
    /// Sessions that agent reports.
    pub session_count: usize,
}

#[derive(Debug)]
struct Agent {
    conn: ConnId,
    session_count: usize,
}

/// Machines with a connected agent.
#[derive(Debug, Default)]
pub struct MachineTable {
    agents: HashMap<String, Agent>,
}

impl MachineTable {
    /// Live state of each of `machine_ids`, in order.
    pub fn status(&self, machine_ids: &[String]) -> Vec<Live> {
        machine_ids
            .iter()
            .map(|id| match self.agents.get(id) {
                Some(agent) => Live {
                    online: true,
                    session_count: agent.session_count,
                },
                None => Live::default(),
            })
            .collect()
    }

    /// Forgets a deleted machine; returns the connection of its agent, to drop it.
    pub fn remove_machine(&mut self, machine_id: &str) -> Option<ConnId> {
        self.agents.remove(machine_id).map(|agent| agent.conn)
    }
}

//! Tests of the failed-join budget (see `limits.rs`).

use super::*;
use std::net::Ipv6Addr;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn failed_joins_are_bounded_relay_wide_whatever_the_number_of_networks() {
    let budget = FailedJoins::new(5, 2, 1000);
    let mut reserved = 0;
    for i in 0..100u16 {
        // 100 different /48s: each has its own share, the relay has one budget.
        let from = IpAddr::from(Ipv6Addr::new(0x2001, 0xdb8, i, 0, 0, 0, 0, 1));
        reserved += usize::from(budget.reserve(from));
    }
    assert_eq!(reserved, 5);
}

#[test]
fn one_network_cannot_spend_the_relay_budget_alone() {
    let budget = FailedJoins::new(10, 2, 1000);
    let attacker = |host: u8| IpAddr::from([198, 51, 100, host]);
    assert!(budget.reserve(attacker(1)));
    assert!(budget.reserve(attacker(2)));
    assert!(!budget.reserve(attacker(3)));
    // Someone else still has the rest of the relay's budget.
    assert!(budget.reserve(ip("203.0.113.9")));
}

#[test]
fn joins_that_did_not_fail_are_given_back() {
    let budget = FailedJoins::new(1, 1, 1000);
    for _ in 0..10 {
        assert!(budget.reserve(ip("192.0.2.1")));
        budget.refund(ip("192.0.2.1"));
    }
    assert!(budget.reserve(ip("192.0.2.1")));
    assert!(!budget.reserve(ip("192.0.2.1")));
}

//! The delivery policy, on real outboxes and a recording actor.

use super::*;
use actix::{Actor, Context, Handler, Message};

/// The only command these tests' connections take: close.
#[derive(Debug, Message)]
#[rtype(result = "()")]
struct Cmd;

impl Command for Cmd {
    fn close(_: Outcome) -> Self {
        Self
    }
}

struct Nobody;

impl Actor for Nobody {
    type Context = Context<Self>;
}

impl Handler<Cmd> for Nobody {
    type Result = ();

    fn handle(&mut self, _: Cmd, _: &mut Context<Self>) {}
}

fn peer(limit: usize) -> (Peer<Cmd>, Arc<Outbox>) {
    let outbox = Outbox::new(limit);
    let addr = Nobody.start().recipient();
    (Peer::new(ConnId::next(), addr, Arc::clone(&outbox)), outbox)
}

fn frame(text: &str) -> Bytes {
    Bytes::copy_from_slice(text.as_bytes())
}

#[test]
fn push_results_map_to_the_policy() {
    assert_eq!(Delivery::of(Ok(())), Delivery::Delivered);
    assert_eq!(
        Delivery::of(Err(PushError::Full)),
        Delivery::Dropped(DropReason::SlowConsumer)
    );
    assert_eq!(
        Delivery::of(Err(PushError::Closed)),
        Delivery::Dropped(DropReason::PeerGone)
    );
}

#[actix_rt::test]
async fn an_away_side_gets_what_was_held_first_and_whole() {
    let mut stream = Stream::new(100);
    assert_eq!(stream.deliver(|_| frame("one")), Delivery::Held);
    assert_eq!(stream.deliver(|_| frame("two")), Delivery::Held);
    let (side, outbox) = peer(1000);
    assert_eq!(stream.connect(side, None), Delivery::Delivered);
    assert_eq!(stream.deliver(|_| frame("three")), Delivery::Delivered);
    assert_eq!(outbox.queued_bytes(), 11);
}

#[actix_rt::test]
async fn holding_past_the_bound_drops_and_a_socket_found_closed_means_away() {
    let mut stream = Stream::new(5);
    let (side, outbox) = peer(1000);
    stream.connect(side, None);
    outbox.close(None);
    // The socket died before anyone noticed: held from now on.
    assert_eq!(stream.deliver(|_| frame("abc")), Delivery::Held);
    assert_eq!(
        stream.deliver(|_| frame("abc")),
        Delivery::Dropped(DropReason::HoldOverflow)
    );
}

#[actix_rt::test]
async fn a_returning_side_whose_outbox_cannot_take_everything_gets_nothing() {
    let mut stream = Stream::new(100);
    stream.deliver(|_| frame("0123456789"));
    stream.deliver(|_| frame("0123456789"));
    let (side, outbox) = peer(15);
    assert_eq!(
        stream.connect(side, None),
        Delivery::Dropped(DropReason::SlowConsumer)
    );
    assert_eq!(outbox.queued_bytes(), 0, "no stream with a hole");
}

#[actix_rt::test]
async fn in_lossless_mode_frames_are_numbered_kept_until_acked_and_replayed_after_last_seq() {
    let mut stream = Stream::new(100);
    stream.number(1000);
    let (side, outbox) = peer(1000);
    stream.connect(side, None);
    for i in 1..=4 {
        let delivery = stream.deliver(|seq| {
            assert_eq!(seq, Some(i));
            frame("x")
        });
        assert_eq!(delivery, Delivery::Delivered);
    }
    stream.ack(2);
    // The connection dies silently; the side comes back having received up to 3.
    outbox.close(None);
    assert_eq!(
        stream.deliver(|seq| frame(&seq.unwrap().to_string())),
        Delivery::Held
    );
    let (side, outbox) = peer(1000);
    assert_eq!(stream.connect(side, Some(3)), Delivery::Delivered);
    // Frames 4 and 5, exactly once.
    assert_eq!(outbox.queued_bytes(), 2);
}

#[actix_rt::test]
async fn in_lossless_mode_the_window_is_bounded() {
    let mut stream = Stream::new(100);
    stream.number(5);
    let (side, _outbox) = peer(1000);
    stream.connect(side, None);
    assert_eq!(stream.deliver(|_| frame("abc")), Delivery::Delivered);
    assert_eq!(
        stream.deliver(|_| frame("abc")),
        Delivery::Dropped(DropReason::WindowFull)
    );
    stream.ack(1);
    assert_eq!(stream.deliver(|_| frame("abc")), Delivery::Delivered);
}

#[actix_rt::test]
async fn a_stream_carried_to_another_node_keeps_its_frames_and_numbering() {
    let text = |s: &str| {
        crate::transport::text_frame_of(s.len(), |buf| buf.extend_from_slice(s.as_bytes()))
    };
    let mut stream: Stream<Cmd> = Stream::new(1 << 20);
    stream.number(1 << 20);
    let long = "x".repeat(70_000); // a 64-bit length header
    for payload in ["one", &"y".repeat(300), &long] {
        stream.deliver(|_| text(payload));
    }
    stream.ack(1);
    let state = stream.export();
    assert_eq!(state.frames.len(), 2);
    assert_eq!(state.frames[0], (2, "y".repeat(300)));
    assert_eq!(state.frames[1], (3, long.clone()));
    let mut moved: Stream<Cmd> = Stream::import(state.clone());
    assert_eq!(moved.export(), state, "nothing changes on the way");
    // The side comes back having received up to 2: it gets frame 3, exactly as it was.
    let (side, outbox) = peer(1 << 20);
    assert_eq!(moved.connect(side, Some(2)), Delivery::Delivered);
    assert_eq!(outbox.queued_bytes(), text(&long).len());
    assert_eq!(
        moved.deliver(|seq| text(&seq.unwrap().to_string())),
        Delivery::Delivered
    );
}

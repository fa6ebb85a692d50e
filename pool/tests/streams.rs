//! Streaming calls: a stream holds its worker slot until it ends or is
//! dropped, also when opened through a lease dropped first. Fake workers
//! and paused time.

mod common;

use common::*;
use futures::StreamExt;
use portpool_pool::Checkout;
use portpool_testkit::WorkerScript;
use portpool_transport::{CallRequest, Value};

#[tokio::test(start_paused = true)]
async fn streams_hold_a_slot_until_they_end_or_are_dropped() {
    let l = launcher();
    let pool = fake_pool(&l, 1).await.unwrap();
    let stream = pool.stream(CallRequest::new("count", 3)).await.unwrap();
    assert_eq!(held(&pool.status()), 1);
    let items: Vec<u64> = stream.map(|r| r.unwrap().as_u64().unwrap()).collect().await;
    assert_eq!(items, [0, 1, 2]);
    assert_eq!(held(&pool.status()), 0);
    let mut stream = pool.stream(CallRequest::new("count", 10)).await.unwrap();
    stream.next().await.unwrap().unwrap();
    drop(stream);
    assert_eq!(held(&pool.status()), 0);
    assert_eq!(
        pool.status().workers[0].served,
        1,
        "a dropped stream is not a served call"
    );
    pool.shutdown(secs(1)).await;
}

/// Issue 11, item 7: a stream opened through a lease holds its slot after the lease
/// is dropped, until the stream ends or is dropped.
#[tokio::test(start_paused = true)]
async fn a_stream_opened_through_a_lease_holds_its_slot_after_the_lease_is_dropped() {
    for kind in [Checkout::Shared, Checkout::Exclusive] {
        let l = launcher().script(|_| WorkerScript::default().chunk_interval(secs(1)));
        let pool = fake_pool(&l, 1).await.unwrap();
        let lease = pool.checkout_with(kind).await.unwrap();
        let mut stream = lease.stream(CallRequest::new("count", 5)).await.unwrap();
        assert_eq!(stream.next().await.unwrap().unwrap(), Value::from(0));
        drop(lease);
        let st = pool.status();
        assert_eq!(held(&st), 1, "{kind:?}: the open stream holds the slot: {st:#?}");
        assert_eq!(st.workers[0].in_flight, 1);
        // The capacity-1 worker runs the stream; a call waits for it.
        let call = spawn_call::<u32>(&pool, "echo", 1);
        settle().await;
        assert_eq!(pool.status().queue_depth, 1, "{kind:?}");
        let rest: Vec<Value> = stream.by_ref().map(|r| r.unwrap()).collect().await;
        assert_eq!(rest.len(), 4);
        assert_eq!(call.await.unwrap().unwrap(), 1);
        assert_eq!(l.workers()[0].peak_in_flight(), 1, "{kind:?}: two calls at once");
        assert_eq!(held(&pool.status()), 0);
        // Dropping such a stream early frees the slot too.
        let lease = pool.checkout_with(kind).await.unwrap();
        let mut stream = lease.stream(CallRequest::new("count", 5)).await.unwrap();
        stream.next().await.unwrap().unwrap();
        drop(lease);
        assert_eq!(held(&pool.status()), 1);
        drop(stream);
        assert_eq!(held(&pool.status()), 0);
        pool.shutdown(secs(1)).await;
    }
}

//! The cluster primitives against a real 3-member etcd on loopback.

use std::time::Duration;

use depot_cluster::{
    ClusterConfig, ClusterError, Committed, FeedEvent, Fence, Guard, Lease, LeaseStatus, Op,
    RouterRecord, Store, Txn, members, owner, watch,
};
use depot_testkit::EtcdCluster;
use tokio_util::sync::CancellationToken;

fn config(etcd: &EtcdCluster, router: &str) -> ClusterConfig {
    let mut c = ClusterConfig::new(router, etcd.endpoints());
    c.lease_ttl = Duration::from_secs(2);
    c.request_timeout = Duration::from_secs(1);
    c
}

fn record(name: &str, node: &str) -> RouterRecord {
    RouterRecord {
        name: name.into(),
        portal: "127.0.0.1:3260".into(),
        api: "http://127.0.0.1:8080".into(),
        peer: String::new(),
        failure_domain: None,
        node_id: node.into(),
        tpgt: 0,
        joined_unix: 0,
    }
}

async fn lease(store: &Store) -> Lease {
    Lease::grant(store, Duration::from_secs(2), Fence::closed())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_and_swap_never_loses_an_update() {
    let etcd = EtcdCluster::start(3);
    let store = Store::connect(&config(&etcd, "r1")).await.unwrap();
    let k = store.keys().key("vms", "web1");
    let created = Txn::new()
        .guard(Guard::Absent(k.clone()))
        .op(Op::Put(k.clone(), b"v1".to_vec()));
    assert!(matches!(
        store.commit(created.clone()).await.unwrap(),
        Committed::Applied(_)
    ));
    assert_eq!(
        store.commit(created).await.unwrap(),
        Committed::Refused,
        "create twice"
    );
    let read = store.get(&k).await.unwrap().unwrap();
    // Two writers that read the same revision: exactly one wins.
    let a = Txn::new()
        .guard(Guard::Revision(k.clone(), read.mod_revision))
        .op(Op::Put(k.clone(), b"a".to_vec()));
    let b = Txn::new()
        .guard(Guard::Revision(k.clone(), read.mod_revision))
        .op(Op::Put(k.clone(), b"b".to_vec()));
    let (ra, rb) = tokio::join!(store.commit(a), store.commit(b));
    let wins = [ra.unwrap(), rb.unwrap()]
        .iter()
        .filter(|c| matches!(c, Committed::Applied(_)))
        .count();
    assert_eq!(wins, 1);
    let now = store.get(&k).await.unwrap().unwrap();
    assert!(now.value == b"a" || now.value == b"b");
    assert!(now.mod_revision > read.mod_revision);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prefix_guard_sees_creations_and_changes_since_a_revision() {
    let etcd = EtcdCluster::start(3);
    let store = Store::connect(&config(&etcd, "r1")).await.unwrap();
    let prefix = store.keys().kind_prefix("vdisks");
    let put = |n: &str| Txn::new().op(Op::Put(store.keys().key("vdisks", n), b"x".to_vec()));
    store.commit(put("a")).await.unwrap();
    let seen = store.revision().await.unwrap();
    let guarded = || {
        Txn::new()
            .guard(Guard::PrefixUnchangedSince(prefix.clone(), seen))
            .op(Op::Put(store.keys().key("vpools", "p"), b"gone".to_vec()))
    };
    assert!(matches!(
        store.commit(guarded()).await.unwrap(),
        Committed::Applied(_)
    ));
    store.commit(put("b")).await.unwrap();
    assert_eq!(store.commit(guarded()).await.unwrap(), Committed::Refused);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_router_with_the_same_name_is_refused() {
    let etcd = EtcdCluster::start(3);
    let store = Store::connect(&config(&etcd, "r1")).await.unwrap();
    let l1 = lease(&store).await;
    let joined = members::join(&store, record("r1", "node-a"), l1.id(), Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(joined.tpgt, 1);
    let l2 = lease(&store).await;
    let e = members::join(
        &store,
        record("r1", "node-b"),
        l2.id(),
        Duration::from_secs(1),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, ClusterError::AlreadyRunning(_)), "{e}");
    assert!(e.to_string().contains("already running"), "{e}");
    // The same node restarting (kill -9, new process) revokes its own old lease.
    let l3 = lease(&store).await;
    let again = members::join(&store, record("r1", "node-a"), l3.id(), Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(again.tpgt, 1, "a member keeps its portal group tag");
    // A second router gets the next tag.
    let l4 = lease(&store).await;
    let r2 = members::join(&store, record("r2", "node-c"), l4.id(), Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(r2.tpgt, 2);
    let list = members::list(&store).await.unwrap();
    assert_eq!(list.len(), 2);
    assert!(list.iter().all(|r| r.up));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lapsed_router_is_down_and_can_be_taken_over_from() {
    let etcd = EtcdCluster::start(3);
    let store = Store::connect(&config(&etcd, "r1")).await.unwrap();
    let l1 = lease(&store).await;
    members::join(&store, record("r1", "a"), l1.id(), Duration::ZERO)
        .await
        .unwrap();
    let l2 = lease(&store).await;
    members::join(&store, record("r2", "b"), l2.id(), Duration::ZERO)
        .await
        .unwrap();
    let first = owner::transfer(&store, "d1", None, "r1").await.unwrap();
    assert!(first.generation > 0);
    // Stale generations lose.
    let again = owner::transfer(&store, "d1", None, "r2").await.unwrap_err();
    assert!(matches!(again, ClusterError::Conflict(_)));
    // No takeover while the owner is up.
    let e = owner::take_over(&store, "d1", &first, "r2")
        .await
        .unwrap_err();
    assert!(matches!(e, ClusterError::Conflict(_)));
    owner::validate(&store, "d1", "r1", first.generation)
        .await
        .unwrap();
    // r1 stops renewing: after its TTL it is down and r2 may take over.
    drop(l1);
    let start = std::time::Instant::now();
    loop {
        if members::alive(&store, "r1").await.unwrap().is_none() {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "r1 never lapsed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let list = members::list(&store).await.unwrap();
    assert!(!list.iter().find(|r| r.record.name == "r1").unwrap().up);
    let taken = owner::take_over(&store, "d1", &first, "r2").await.unwrap();
    assert!(taken.generation > first.generation, "generations only grow");
    let e = owner::validate(&store, "d1", "r1", first.generation)
        .await
        .unwrap_err();
    assert!(matches!(e, ClusterError::Fenced(_)), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fence_closes_when_the_lease_is_gone() {
    let etcd = EtcdCluster::start(3);
    let store = Store::connect(&config(&etcd, "r1")).await.unwrap();
    let l = lease(&store).await;
    assert!(l.fence().is_open());
    let mut status = l.status();
    // Someone revokes the lease (as etcd does when it expires).
    let other = Store::connect(&config(&etcd, "r2")).await.unwrap();
    other.revoke_lease(l.id()).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), async {
        while *status.borrow_and_update() != LeaseStatus::Expired {
            status.changed().await.unwrap();
        }
    })
    .await
    .expect("renewal notices the lease is gone");
    assert!(!l.fence().is_open());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn io_goes_on_while_etcd_has_no_quorum() {
    let mut etcd = EtcdCluster::start(3);
    let store = Store::connect(&config(&etcd, "r1")).await.unwrap();
    let l = lease(&store).await;
    etcd.kill_all();
    // Well past the 2 s TTL: every member refuses, so no quorum can exist
    // and no one can take over; the fence stays open.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        l.fence().is_open(),
        "fence must stay open while etcd is down"
    );
    assert_eq!(*l.status().borrow(), LeaseStatus::EtcdDown);
    // Management changes fail with a clear error.
    let e = store.get("/depot/vms/x").await.unwrap_err();
    assert!(e.is_unavailable(), "{e}");
    etcd.restart_all();
    let mut status = l.status();
    tokio::time::timeout(Duration::from_secs(10), async {
        while *status.borrow_and_update() != LeaseStatus::Live {
            status.changed().await.unwrap();
        }
    })
    .await
    .expect("the lease renews once etcd is back (a new leader refreshes leases)");
    assert!(l.fence().is_open());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fence_closes_when_etcd_cannot_be_shown_down() {
    let mut etcd = EtcdCluster::start(3);
    let mut cfg = config(&etcd, "r1");
    // This router only knows one member; the other two keep a quorum it
    // cannot see, so it must fence itself.
    cfg.endpoints = vec![etcd.endpoints()[0].clone()];
    let store = Store::connect(&cfg).await.unwrap();
    let l = lease(&store).await;
    assert_eq!(
        store.members().len(),
        3,
        "probes ask every member etcd lists"
    );
    etcd.kill(0);
    // One refused member of three proves nothing: the other two may hold a
    // quorum (they do), so the fence closes once the lease would lapse.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        !l.fence().is_open(),
        "a router cut off from a live quorum fences itself"
    );
    assert_eq!(*l.status().borrow(), LeaseStatus::Renewing);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_feed_delivers_a_snapshot_then_changes() {
    let etcd = EtcdCluster::start(3);
    let store = Store::connect(&config(&etcd, "r1")).await.unwrap();
    let k = |n: &str| store.keys().key("vms", n);
    store
        .commit(Txn::new().op(Op::Put(k("a"), b"1".to_vec())))
        .await
        .unwrap();
    let stop = CancellationToken::new();
    let mut feed = watch::feed(store.clone(), store.keys().root(), stop.clone());
    let Some(FeedEvent::Snapshot { kvs, .. }) = feed.recv().await else {
        panic!("first event is a snapshot");
    };
    assert_eq!(kvs.len(), 1);
    store
        .commit(Txn::new().op(Op::Put(k("b"), b"2".to_vec())))
        .await
        .unwrap();
    store
        .commit(Txn::new().op(Op::Delete(k("a"))))
        .await
        .unwrap();
    let mut seen = Vec::new();
    while seen.len() < 2 {
        match tokio::time::timeout(Duration::from_secs(5), feed.recv()).await {
            Ok(Some(FeedEvent::Changes(c))) => seen.extend(c),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(matches!(&seen[0], depot_cluster::Change::Put(v) if v.key == k("b")));
    assert!(matches!(&seen[1], depot_cluster::Change::Delete { key, .. } if *key == k("a")));
    stop.cancel();
}

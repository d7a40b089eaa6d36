//! Router-to-router connections over loopback: only routers of the cluster
//! get through, in either direction.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use depot_peer::{
    CaRecord, Gate, Handler, PeerClient, PeerError, Refusal, ReplyFuture, RouterIdentity, serve,
};
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

struct Echo;

impl Handler for Echo {
    fn handle(&self, from: &str, op: &str, msg: Value, body: Bytes) -> ReplyFuture {
        let from = from.to_string();
        let op = op.to_string();
        Box::pin(async move {
            if op == "fail" {
                return Err("refused on purpose".into());
            }
            Ok((json!({"from": from, "op": op, "msg": msg}), body))
        })
    }
}

/// A server admitting `members`; what it refused, in order.
struct Server {
    addr: String,
    refused: Arc<Mutex<Vec<Refusal>>>,
    _stop: tokio_util::sync::DropGuard,
}

impl Server {
    /// Waits (bounded) until the server has refused `want`, in that order.
    async fn refused(&self, want: &[Refusal]) {
        for _ in 0..100 {
            if self.refused.lock().len() >= want.len() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(&self.refused.lock()[..], want);
    }
}

async fn server(id: RouterIdentity, members: &'static [&'static str]) -> Server {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let stop = CancellationToken::new();
    let refused = Arc::new(Mutex::new(Vec::new()));
    let seen = refused.clone();
    let gate = Gate {
        admit: Arc::new(move |r: &str| members.contains(&r)),
        refused: Arc::new(move |why| seen.lock().push(why)),
    };
    tokio::spawn(serve(l, id, gate, Arc::new(Echo), stop.clone()));
    Server {
        addr,
        refused,
        _stop: stop.drop_guard(),
    }
}

const T: Duration = Duration::from_secs(5);

#[tokio::test]
async fn routers_of_the_cluster_talk() {
    let ca = CaRecord::generate("Depot cluster test").unwrap();
    let srv = server(ca.issue("r1").unwrap(), &["r2"]).await;
    let c = PeerClient::new(ca.issue("r2").unwrap(), "r1", &srv.addr);
    let (v, body): (Value, Bytes) = c.call("echo", &json!({"x": 1}), b"data", T).await.unwrap();
    assert_eq!(v["from"], "r2");
    assert_eq!(v["msg"]["x"], 1);
    assert_eq!(&body[..], b"data");
    // Many calls at once share the connection.
    let calls = (0..50).map(|i| {
        let c = &c;
        async move {
            let (v, _): (Value, Bytes) = c.call("echo", &json!({"i": i}), &[], T).await.unwrap();
            assert_eq!(v["msg"]["i"], i);
        }
    });
    futures::future::join_all(calls).await;
    let e = c
        .call::<_, Value>("fail", &json!({}), &[], T)
        .await
        .unwrap_err();
    assert!(
        matches!(e, PeerError::Refused(ref m) if m == "refused on purpose"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_frames_both_ways_arrive_whole() {
    // Bodies bigger than a socket buffer, many at once, echoed back: every
    // frame must be flushed to its end, not left in TLS's buffer.
    let ca = CaRecord::generate("Depot cluster test").unwrap();
    let srv = server(ca.issue("r1").unwrap(), &["r2"]).await;
    let c = std::sync::Arc::new(PeerClient::new(ca.issue("r2").unwrap(), "r1", &srv.addr));
    let calls = (0..12u8).map(|i| {
        let c = c.clone();
        async move {
            let body = vec![i; 6 << 20];
            let (_, back): (Value, Bytes) =
                c.call("echo", &json!({"i": i}), &body, T).await.unwrap();
            assert_eq!(back.len(), body.len());
            assert!(back.iter().all(|&b| b == i));
        }
    });
    futures::future::join_all(calls).await;
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused() {
    let ca = CaRecord::generate("Depot cluster test").unwrap();
    let other = CaRecord::generate("Depot cluster other").unwrap();
    let srv = server(ca.issue("r1").unwrap(), &["r2"]).await;
    let mut intruder = other.issue("r2").unwrap();
    // Even trusting the right CA, its own certificate is not the cluster's.
    intruder.ca_pem = ca.cert_pem.clone();
    let c = PeerClient::new(intruder, "r1", &srv.addr);
    let e = c
        .call::<_, Value>("echo", &json!({}), &[], T)
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            PeerError::NotAuthorized(_) | PeerError::Unreachable { .. }
        ),
        "{e}"
    );
    srv.refused(&[Refusal::Tls]).await;
}

#[tokio::test]
async fn a_router_cannot_claim_another_name_or_join_unadmitted() {
    let ca = CaRecord::generate("Depot cluster test").unwrap();
    let srv = server(ca.issue("r1").unwrap(), &["r2"]).await;
    // r3's certificate, claiming to be r2.
    let mut liar = ca.issue("r3").unwrap();
    liar.router = "r2".into();
    let c = PeerClient::new(liar, "r1", &srv.addr);
    assert!(
        c.call::<_, Value>("echo", &json!({}), &[], T)
            .await
            .is_err()
    );
    srv.refused(&[Refusal::Name]).await;
    // r3 is honest but not a member.
    let c = PeerClient::new(ca.issue("r3").unwrap(), "r1", &srv.addr);
    assert!(
        c.call::<_, Value>("echo", &json!({}), &[], T)
            .await
            .is_err()
    );
    srv.refused(&[Refusal::Name, Refusal::Member]).await;
}

#[tokio::test]
async fn a_server_must_be_the_router_we_meant() {
    let ca = CaRecord::generate("Depot cluster test").unwrap();
    let srv = server(ca.issue("r1").unwrap(), &["r2"]).await;
    // We want r3 but reach r1's address: its certificate does not name r3.
    let c = PeerClient::new(ca.issue("r2").unwrap(), "r3", &srv.addr);
    let e = c
        .call::<_, Value>("echo", &json!({}), &[], T)
        .await
        .unwrap_err();
    assert!(matches!(e, PeerError::NotAuthorized(_)), "{e}");
}

#[tokio::test]
async fn garbage_closes_only_its_own_connection() {
    let ca = CaRecord::generate("Depot cluster test").unwrap();
    let srv = server(ca.issue("r1").unwrap(), &["r2"]).await;
    let mut raw = tokio::net::TcpStream::connect(&srv.addr).await.unwrap();
    raw.write_all(&[0xff; 4096]).await.unwrap();
    let c = PeerClient::new(ca.issue("r2").unwrap(), "r1", &srv.addr);
    let (v, _): (Value, Bytes) = c.call("echo", &json!({}), &[], T).await.unwrap();
    assert_eq!(v["from"], "r2");
    srv.refused(&[Refusal::Tls]).await;
}

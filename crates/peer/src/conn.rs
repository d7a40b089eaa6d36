//! Connections between routers: mutual TLS, a `Hello`/`Welcome` exchange
//! naming both ends, then multiplexed requests and responses.
//!
//! Server invariants: a connection is served only once its client
//! certificate chains to the cluster CA, names the router its `Hello`
//! claims, and that router is admitted (a member of the cluster). A
//! protocol violation closes that one connection. Handshakes and the hello
//! are bounded in time; each connection runs at most [`MAX_IN_FLIGHT`]
//! requests at once.
//!
//! Client invariants: it talks only to a server whose certificate names the
//! router it meant to reach; a broken connection fails every pending call
//! with `Unreachable` and the next call connects again.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_util::sync::CancellationToken;

use crate::error::{PeerError, PeerResult};
use crate::frame::{Decoder, Frame, Head, encode};
use crate::pki::{RouterIdentity, cert_names, server_name};

/// Requests one connection may have running at once on the server.
pub const MAX_IN_FLIGHT: usize = 32;
/// Time allowed for the TLS handshake plus the hello.
const HANDSHAKE: Duration = Duration::from_secs(10);

/// What a handler returns: a JSON result and a body, or a refusal message.
pub type Reply = Result<(serde_json::Value, Bytes), String>;
/// A handler's future.
pub type ReplyFuture = Pin<Box<dyn Future<Output = Reply> + Send>>;

/// Serves requests from other routers.
pub trait Handler: Send + Sync + 'static {
    /// Handles `op` from router `from`.
    fn handle(&self, from: &str, op: &str, msg: serde_json::Value, body: Bytes) -> ReplyFuture;
}

/// Decides whether a router name may connect (is a member).
pub type Admit = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// Why a connection was refused before it could send a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The TLS handshake failed: no client certificate, one the cluster's
    /// CA did not issue, or not TLS at all.
    Tls,
    /// The certificate does not name the router the hello claims.
    Name,
    /// The router is not a member of the cluster.
    Member,
    /// No valid hello within the handshake time.
    Hello,
}

impl Refusal {
    /// A short label (metrics, logs).
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Tls => "tls",
            Refusal::Name => "name",
            Refusal::Member => "member",
            Refusal::Hello => "hello",
        }
    }
}

/// Who may connect, and who hears of those refused.
#[derive(Clone)]
pub struct Gate {
    /// Whether a router name is a member.
    pub admit: Admit,
    /// Told once per refused connection (after it is logged).
    pub refused: Arc<dyn Fn(Refusal) + Send + Sync>,
}

/// Accepts router connections on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    identity: RouterIdentity,
    gate: Gate,
    handler: Arc<dyn Handler>,
    shutdown: CancellationToken,
) -> PeerResult<()> {
    let acceptor = TlsAcceptor::from(identity.server_config()?);
    let me = identity.router.clone();
    loop {
        let (tcp, addr) = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            a = listener.accept() => match a {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "peer accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let (acceptor, gate, handler, me, stop) = (
            acceptor.clone(),
            gate.clone(),
            handler.clone(),
            me.clone(),
            shutdown.clone(),
        );
        tokio::spawn(async move {
            if let Err(e) = serve_conn(tcp, addr, acceptor, gate, handler, me, stop).await {
                tracing::warn!(%addr, error = %e, "peer connection closed");
            }
        });
    }
}

async fn serve_conn(
    tcp: TcpStream,
    addr: SocketAddr,
    acceptor: TlsAcceptor,
    gate: Gate,
    handler: Arc<dyn Handler>,
    me: String,
    stop: CancellationToken,
) -> PeerResult<()> {
    let unreachable = |reason: String| PeerError::Unreachable {
        router: addr.to_string(),
        reason,
    };
    let hello = async {
        let tls = acceptor.accept(tcp).await.map_err(|e| {
            (
                Refusal::Tls,
                PeerError::NotAuthorized(format!("{addr}: TLS: {e}")),
            )
        })?;
        let cert = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.clone().into_owned());
        let (mut rd, wr) = tokio::io::split(tls);
        let mut buf = BytesMut::with_capacity(16 * 1024);
        let first = read_frame(&mut rd, &mut buf)
            .await
            .map_err(|e| (Refusal::Hello, e))?;
        let Some(Frame {
            head: Head::Hello { router },
            ..
        }) = first
        else {
            return Err((
                Refusal::Hello,
                PeerError::Protocol("first frame is not a hello".into()),
            ));
        };
        let named = cert.is_some_and(|c| cert_names(&c, &router));
        if !named {
            return Err((
                Refusal::Name,
                PeerError::NotAuthorized(format!(
                    "{addr}: certificate does not name router {router:?}"
                )),
            ));
        }
        if !(gate.admit)(&router) {
            return Err((
                Refusal::Member,
                PeerError::NotAuthorized(format!(
                    "{addr}: {router:?} is not a member of the cluster"
                )),
            ));
        }
        Ok((rd, wr, buf, router))
    };
    let hello = tokio::time::timeout(HANDSHAKE, hello)
        .await
        .unwrap_or_else(|_| Err((Refusal::Hello, unreachable("handshake timed out".into()))));
    let (mut rd, mut wr, mut buf, from) = match hello {
        Ok(h) => h,
        Err((why, e)) => {
            tracing::warn!(%addr, reason = why.as_str(), error = %e, "peer connection refused");
            (gate.refused)(why);
            return Ok(());
        }
    };
    send(&mut wr, &encode(&Head::Welcome { router: me }, &[])?)
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    let (tx, mut out) = mpsc::channel::<Bytes>(64);
    let writer = tokio::spawn(async move {
        while let Some(b) = out.recv().await {
            if send(&mut wr, &b).await.is_err() {
                return;
            }
        }
    });
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let result = loop {
        let frame = tokio::select! {
            () = stop.cancelled() => break Ok(()),
            f = read_frame(&mut rd, &mut buf) => f,
        };
        let frame = match frame {
            Ok(Some(f)) => f,
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        };
        let Head::Request { id, op, msg } = frame.head else {
            break Err(PeerError::Protocol("expected a request".into()));
        };
        let Ok(permit) = slots.clone().acquire_owned().await else {
            break Ok(());
        };
        let (handler, from, tx) = (handler.clone(), from.clone(), tx.clone());
        tokio::spawn(async move {
            let reply = handler.handle(&from, &op, msg, frame.body).await;
            let bytes = match reply {
                Ok((msg, body)) => encode(&Head::Response { id, msg }, &body),
                Err(message) => encode(&Head::Error { id, message }, &[]),
            };
            match bytes {
                Ok(b) => {
                    let _ = tx.send(b).await;
                }
                Err(e) => {
                    let _ = tx
                        .send(
                            encode(
                                &Head::Error {
                                    id,
                                    message: e.to_string(),
                                },
                                &[],
                            )
                            .unwrap_or_default(),
                        )
                        .await;
                }
            }
            drop(permit);
        });
    };
    drop(tx);
    let _ = writer.await;
    result
}

/// Writes one frame and flushes it. TLS buffers what the socket does not
/// take at once; without the flush the end of a frame could wait in that
/// buffer for the next write while the peer waits for the frame (both
/// sides idle: the deadlock a large frame under load used to hit).
async fn send<W: tokio::io::AsyncWrite + Unpin>(wr: &mut W, frame: &[u8]) -> std::io::Result<()> {
    wr.write_all(frame).await?;
    wr.flush().await
}

/// Reads the next frame; `None` at a clean end of stream.
async fn read_frame<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut BytesMut,
) -> PeerResult<Option<Frame>> {
    let mut dec = Decoder;
    loop {
        if let Some(f) = dec.decode(buf)? {
            return Ok(Some(f));
        }
        let n = rd.read_buf(buf).await.map_err(|e| PeerError::Unreachable {
            router: "peer".into(),
            reason: e.to_string(),
        })?;
        if n == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(PeerError::Protocol("connection closed mid-frame".into()))
            };
        }
    }
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<PeerResult<(serde_json::Value, Bytes)>>>>>;

struct Conn {
    tx: mpsc::Sender<Bytes>,
    pending: Pending,
    closed: CancellationToken,
}

/// A client of one other router; connects on first use and again after a
/// failure.
pub struct PeerClient {
    identity: RouterIdentity,
    target: String,
    addr: String,
    conn: tokio::sync::Mutex<Option<Arc<Conn>>>,
    next_id: AtomicU64,
}

impl std::fmt::Debug for PeerClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerClient")
            .field("target", &self.target)
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl PeerClient {
    /// A client of router `target` at `addr` (`host:port`).
    pub fn new(identity: RouterIdentity, target: &str, addr: &str) -> Self {
        PeerClient {
            identity,
            target: target.to_string(),
            addr: addr.to_string(),
            conn: tokio::sync::Mutex::new(None),
            next_id: AtomicU64::new(1),
        }
    }

    /// The router this client talks to.
    pub fn target(&self) -> &str {
        &self.target
    }

    fn unreachable(&self, reason: impl std::fmt::Display) -> PeerError {
        PeerError::Unreachable {
            router: self.target.clone(),
            reason: reason.to_string(),
        }
    }

    async fn connect(&self) -> PeerResult<Arc<Conn>> {
        let mut guard = self.conn.lock().await;
        if let Some(c) = guard.as_ref()
            && !c.closed.is_cancelled()
        {
            return Ok(c.clone());
        }
        let connector = TlsConnector::from(self.identity.client_config()?);
        let name = server_name(&self.target)?;
        let setup = async {
            let tcp = TcpStream::connect(&self.addr)
                .await
                .map_err(|e| self.unreachable(e))?;
            let _ = tcp.set_nodelay(true);
            let tls = connector.connect(name, tcp).await.map_err(|e| {
                PeerError::NotAuthorized(format!("{} at {}: TLS: {e}", self.target, self.addr))
            })?;
            let (mut rd, mut wr) = tokio::io::split(tls);
            send(
                &mut wr,
                &encode(
                    &Head::Hello {
                        router: self.identity.router.clone(),
                    },
                    &[],
                )?,
            )
            .await
            .map_err(|e| self.unreachable(e))?;
            let mut buf = BytesMut::with_capacity(16 * 1024);
            match read_frame(&mut rd, &mut buf).await? {
                Some(Frame {
                    head: Head::Welcome { .. },
                    ..
                }) => Ok((rd, wr, buf)),
                _ => Err(PeerError::NotAuthorized(format!(
                    "{} refused this router",
                    self.target
                ))),
            }
        };
        let (mut rd, mut wr, mut buf) = tokio::time::timeout(HANDSHAKE, setup)
            .await
            .map_err(|_| self.unreachable("handshake timed out"))??;
        let (tx, mut out) = mpsc::channel::<Bytes>(64);
        let pending: Pending = Arc::default();
        let closed = CancellationToken::new();
        let conn = Arc::new(Conn {
            tx,
            pending: pending.clone(),
            closed: closed.clone(),
        });
        let wclosed = closed.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = wclosed.cancelled() => break,
                    b = out.recv() => match b {
                        Some(b) => if send(&mut wr, &b).await.is_err() { break },
                        None => break,
                    },
                }
            }
            wclosed.cancel();
            let _ = wr.shutdown().await;
        });
        let target = self.target.clone();
        tokio::spawn(async move {
            let err = loop {
                let f = tokio::select! {
                    () = closed.cancelled() => break "closed".to_string(),
                    f = read_frame(&mut rd, &mut buf) => f,
                };
                let (id, result) = match f {
                    Ok(Some(Frame {
                        head: Head::Response { id, msg },
                        body,
                    })) => (id, Ok((msg, body))),
                    Ok(Some(Frame {
                        head: Head::Error { id, message },
                        ..
                    })) => (id, Err(PeerError::Refused(message))),
                    Ok(Some(_)) => break "unexpected frame".to_string(),
                    Ok(None) => break "connection closed".to_string(),
                    Err(e) => break e.to_string(),
                };
                if let Some(w) = pending.lock().remove(&id) {
                    let _ = w.send(result);
                }
            };
            closed.cancel();
            for (_, w) in pending.lock().drain() {
                let _ = w.send(Err(PeerError::Unreachable {
                    router: target.clone(),
                    reason: err.clone(),
                }));
            }
        });
        *guard = Some(conn.clone());
        Ok(conn)
    }

    /// Calls `op` with `req` and `body`; waits at most `limit`.
    pub async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        op: &str,
        req: &Req,
        body: &[u8],
        limit: Duration,
    ) -> PeerResult<(Resp, Bytes)> {
        let run = async {
            let conn = self.connect().await?;
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            let msg = serde_json::to_value(req).map_err(|e| PeerError::Protocol(e.to_string()))?;
            let bytes = encode(
                &Head::Request {
                    id,
                    op: op.to_string(),
                    msg,
                },
                body,
            )?;
            let (w, r) = oneshot::channel();
            conn.pending.lock().insert(id, w);
            if conn.tx.send(bytes).await.is_err() {
                conn.pending.lock().remove(&id);
                return Err(self.unreachable("connection closed"));
            }
            let (msg, body) = r
                .await
                .map_err(|_| self.unreachable("connection closed"))??;
            let resp = serde_json::from_value(msg)
                .map_err(|e| PeerError::Protocol(format!("bad response to {op}: {e}")))?;
            Ok((resp, body))
        };
        tokio::time::timeout(limit, run).await.map_err(|_| {
            self.unreachable(format!("{op} timed out after {} ms", limit.as_millis()))
        })?
    }
}

//! The send side of one connection.
//!
//! PDUs are encoded into an outbox when they are queued: StatSN is stamped
//! in queue order (so it is strictly sequential on the wire), ExpCmdSN and
//! MaxCmdSN are read at that moment (callers publish the window before they
//! queue a response). Small payloads are copied next to their header; large
//! ones stay in their own `Bytes` and go out by reference.
//!
//! Nothing is written until [`Writer::flush`]: the connection task queues
//! everything one socket read produced (responses, R2Ts, Data-In) and then
//! flushes once, writing the batch with one non-blocking vectored write on
//! its own thread — no hop to another task on the common path. Only when
//! the socket is full does a background task take over, wait for
//! writability and drain the rest; while it owns the outbox, inline flushes
//! leave it alone, so bytes never interleave or reorder.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use bytes::{Buf, Bytes, BytesMut};
use depot_iscsi_proto::encode::{StatSn, TargetPdu};
use parking_lot::Mutex;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::{Notify, oneshot};

/// The command window stamped on every PDU.
#[derive(Debug, Default)]
pub struct Window {
    /// ExpCmdSN.
    pub exp_cmd_sn: AtomicU32,
    /// MaxCmdSN.
    pub max_cmd_sn: AtomicU32,
}

/// Handle to a connection's send side; cheap to clone. When the last
/// handle goes, the background task ends.
#[derive(Clone)]
pub struct Writer {
    shared: Arc<Shared>,
    _life: Arc<Life>,
}

/// Tells the background task that no handle is left.
struct Life(Arc<Shared>);

impl Drop for Life {
    fn drop(&mut self) {
        self.0.gone.store(true, Ordering::Release);
        self.0.wake.notify_one();
    }
}

struct Shared {
    half: OwnedWriteHalf,
    window: Arc<Window>,
    out: Mutex<Outbox>,
    /// Wakes the background drainer.
    wake: Notify,
    failed: AtomicBool,
    /// Every [`Writer`] handle is dropped.
    gone: AtomicBool,
}

struct Outbox {
    stat_sn: u32,
    header_digest: bool,
    data_digest: bool,
    /// Encoded bytes waiting for the socket, in wire order; `small` is the
    /// tail still being filled.
    segs: VecDeque<Bytes>,
    small: BytesMut,
    /// The background task is draining (the socket was full): inline
    /// flushes must not write.
    handed_off: bool,
    /// Set by `close`: drain, shut the socket down, then acknowledge.
    closing: Option<oneshot::Sender<()>>,
}

/// Payloads up to this size are copied next to their header.
const INLINE_DATA: usize = 16 * 1024;
/// Most slices handed to one writev.
const MAX_IOV: usize = 64;

impl Writer {
    /// Starts the writer; `stat_sn` is the first StatSN to send.
    pub fn spawn(half: OwnedWriteHalf, window: Arc<Window>, stat_sn: u32) -> Writer {
        let shared = Arc::new(Shared {
            half,
            window,
            out: Mutex::new(Outbox {
                stat_sn,
                header_digest: false,
                data_digest: false,
                segs: VecDeque::new(),
                small: BytesMut::with_capacity(64 * 1024),
                handed_off: false,
                closing: None,
            }),
            wake: Notify::new(),
            failed: AtomicBool::new(false),
            gone: AtomicBool::new(false),
        });
        tokio::spawn(drain_task(shared.clone()));
        Writer {
            _life: Arc::new(Life(shared.clone())),
            shared,
        }
    }

    /// Queues a PDU (sent at the next [`flush`](Self::flush)). Returns
    /// false if the connection is gone.
    pub fn send(&self, mut pdu: TargetPdu) -> bool {
        if self.shared.failed.load(Ordering::Acquire) {
            return false;
        }
        let exp = self.shared.window.exp_cmd_sn.load(Ordering::Acquire);
        let max = self.shared.window.max_cmd_sn.load(Ordering::Acquire);
        let mut out = self.shared.out.lock();
        if out.closing.is_some() {
            return false;
        }
        pdu.stamp(out.stat_sn, exp, max);
        if pdu.stat_sn == StatSn::Advance {
            out.stat_sn = out.stat_sn.wrapping_add(1);
        }
        let (hd, dd) = (out.header_digest, out.data_digest);
        pdu.write_header(&mut out.small, hd);
        let (trailer, n) = pdu.trailer(dd);
        if pdu.data.len() <= INLINE_DATA {
            out.small.extend_from_slice(&pdu.data);
        } else {
            let head = out.small.split().freeze();
            out.segs.push_back(head);
            out.segs.push_back(pdu.data);
        }
        out.small.extend_from_slice(&trailer[..n]);
        true
    }

    /// Switches digests for PDUs queued after this call.
    pub fn set_digests(&self, header: bool, data: bool) {
        let mut out = self.shared.out.lock();
        out.header_digest = header;
        out.data_digest = data;
    }

    /// Writes what is queued without waiting: as much as the socket takes
    /// now, on the caller's thread; the rest is left to the background
    /// task.
    pub fn flush(&self) {
        let sh = &self.shared;
        let mut out = sh.out.lock();
        if out.handed_off {
            return;
        }
        match write_now(&sh.half, &mut out) {
            Ok(true) => {}
            Ok(false) => {
                out.handed_off = true;
                drop(out);
                sh.wake.notify_one();
            }
            Err(e) => {
                tracing::debug!(error = %e, "connection write failed");
                sh.failed.store(true, Ordering::Release);
                out.segs.clear();
                out.small.clear();
            }
        }
    }

    /// Sends everything queued, then shuts the socket's send side down.
    pub async fn close(&self) {
        let (ack, done) = oneshot::channel();
        {
            let mut out = self.shared.out.lock();
            out.closing = Some(ack);
            out.handed_off = true;
        }
        self.shared.wake.notify_one();
        let _ = done.await;
    }
}

/// Moves `small` into the segment queue and writes until the queue is empty
/// (`Ok(true)`) or the socket is full (`Ok(false)`).
fn write_now(half: &OwnedWriteHalf, out: &mut Outbox) -> std::io::Result<bool> {
    if !out.small.is_empty() {
        let tail = out.small.split().freeze();
        out.segs.push_back(tail);
    }
    while !out.segs.is_empty() {
        let r = {
            let mut iov = [IoSlice::new(&[]); MAX_IOV];
            let mut n = 0;
            for (slot, seg) in iov.iter_mut().zip(&out.segs) {
                *slot = IoSlice::new(seg);
                n += 1;
            }
            half.try_write_vectored(&iov[..n])
        };
        let n = match r {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let mut left = n;
        while left > 0 {
            let Some(front) = out.segs.front_mut() else {
                break;
            };
            if front.len() <= left {
                left -= front.len();
                out.segs.pop_front();
            } else {
                front.advance(left);
                left = 0;
            }
        }
    }
    Ok(true)
}

/// Drains the outbox whenever a flush found the socket full, and performs
/// `close`. After a write error it only answers `close`; it exits once the
/// socket is shut down or every handle is gone.
async fn drain_task(sh: Arc<Shared>) {
    loop {
        sh.wake.notified().await;
        loop {
            let (done, ack) = {
                let mut out = sh.out.lock();
                if sh.failed.load(Ordering::Acquire) {
                    out.segs.clear();
                    out.small.clear();
                    (true, out.closing.take())
                } else {
                    match write_now(&sh.half, &mut out) {
                        Ok(true) => {
                            out.handed_off = false;
                            (true, out.closing.take())
                        }
                        Ok(false) => (false, None),
                        Err(e) => {
                            fail(&sh, &e);
                            out.segs.clear();
                            out.small.clear();
                            (true, out.closing.take())
                        }
                    }
                }
            };
            if let Some(ack) = ack {
                let _ =
                    socket2::SockRef::from(sh.half.as_ref()).shutdown(std::net::Shutdown::Write);
                let _ = ack.send(());
                return;
            }
            if done {
                break;
            }
            if let Err(e) = sh.half.writable().await {
                fail(&sh, &e);
            }
        }
        if sh.gone.load(Ordering::Acquire) {
            return;
        }
    }
}

fn fail(sh: &Shared, e: &std::io::Error) {
    tracing::debug!(error = %e, "writer stopped");
    sh.failed.store(true, Ordering::Release);
}

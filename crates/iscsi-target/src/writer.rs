//! The send side of one connection.
//!
//! A single task owns the socket's write half. PDUs arrive on a channel; the
//! writer takes every PDU already queued, stamps StatSN (in send order, so
//! StatSN is strictly sequential on the wire), ExpCmdSN and MaxCmdSN (read at
//! send time, so they are current), and writes the batch with one vectored
//! write: small payloads are copied next to their header, large ones are
//! sent straight from their `Bytes`.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use bytes::{Buf, Bytes, BytesMut};
use depot_iscsi_proto::encode::{StatSn, TargetPdu};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::{mpsc, oneshot};

/// The command window the writer stamps on every PDU.
#[derive(Debug, Default)]
pub struct Window {
    /// ExpCmdSN.
    pub exp_cmd_sn: AtomicU32,
    /// MaxCmdSN.
    pub max_cmd_sn: AtomicU32,
}

/// What the writer is asked to do.
pub enum Out {
    /// Send a PDU.
    Pdu(TargetPdu),
    /// Switch digests (after login).
    Digests {
        /// Header digest on.
        header: bool,
        /// Data digest on.
        data: bool,
    },
    /// Send everything queued, shut the socket down, then acknowledge.
    Close(oneshot::Sender<()>),
}

/// Handle to the writer task.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::UnboundedSender<Out>,
    failed: Arc<AtomicBool>,
}

/// Payloads up to this size are copied next to their header.
const INLINE_DATA: usize = 16 * 1024;
/// Largest batch gathered before writing.
const MAX_BATCH_BYTES: usize = 4 << 20;
/// Most slices handed to one writev.
const MAX_IOV: usize = 64;

impl Writer {
    /// Starts the writer task; `stat_sn` is the first StatSN to send.
    pub fn spawn(half: OwnedWriteHalf, window: Arc<Window>, stat_sn: u32) -> Writer {
        let (tx, rx) = mpsc::unbounded_channel();
        let failed = Arc::new(AtomicBool::new(false));
        let f = failed.clone();
        tokio::spawn(async move {
            if let Err(e) = run(half, rx, window, stat_sn).await {
                tracing::debug!(error = %e, "writer stopped");
                f.store(true, Ordering::Release);
            }
        });
        Writer { tx, failed }
    }

    /// Queues a PDU. Returns false if the connection is gone.
    pub fn send(&self, pdu: TargetPdu) -> bool {
        !self.failed.load(Ordering::Acquire) && self.tx.send(Out::Pdu(pdu)).is_ok()
    }

    /// Switches digests for PDUs queued after this call.
    pub fn set_digests(&self, header: bool, data: bool) {
        let _ = self.tx.send(Out::Digests { header, data });
    }

    /// Sends everything queued, then closes the socket.
    pub async fn close(&self) {
        let (ack, done) = oneshot::channel();
        if self.tx.send(Out::Close(ack)).is_ok() {
            let _ = done.await;
        }
    }
}

async fn run(
    mut half: OwnedWriteHalf,
    mut rx: mpsc::UnboundedReceiver<Out>,
    window: Arc<Window>,
    mut stat_sn: u32,
) -> std::io::Result<()> {
    let (mut hd, mut dd) = (false, false);
    let mut segs: VecDeque<Bytes> = VecDeque::new();
    let mut small = BytesMut::with_capacity(64 * 1024);
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        let mut closing = None;
        let mut batched = 0usize;
        while let Some(out) = next.take() {
            match out {
                Out::Pdu(mut pdu) => {
                    let exp = window.exp_cmd_sn.load(Ordering::Acquire);
                    let max = window.max_cmd_sn.load(Ordering::Acquire);
                    pdu.stamp(stat_sn, exp, max);
                    if pdu.stat_sn == StatSn::Advance {
                        stat_sn = stat_sn.wrapping_add(1);
                    }
                    batched += 48 + pdu.data.len();
                    pdu.write_header(&mut small, hd);
                    let (trailer, n) = pdu.trailer(dd);
                    if pdu.data.len() <= INLINE_DATA {
                        small.extend_from_slice(&pdu.data);
                        small.extend_from_slice(&trailer[..n]);
                    } else {
                        segs.push_back(small.split().freeze());
                        segs.push_back(pdu.data);
                        small.extend_from_slice(&trailer[..n]);
                    }
                }
                Out::Digests { header, data } => {
                    hd = header;
                    dd = data;
                }
                Out::Close(ack) => {
                    closing = Some(ack);
                    break;
                }
            }
            if batched < MAX_BATCH_BYTES {
                next = rx.try_recv().ok();
            }
        }
        if !small.is_empty() {
            segs.push_back(small.split().freeze());
        }
        write_all(&mut half, &mut segs).await?;
        if let Some(ack) = closing {
            let _ = half.shutdown().await;
            let _ = ack.send(());
            return Ok(());
        }
    }
    Ok(())
}

async fn write_all(half: &mut OwnedWriteHalf, segs: &mut VecDeque<Bytes>) -> std::io::Result<()> {
    while !segs.is_empty() {
        let n = {
            let iov: Vec<IoSlice<'_>> =
                segs.iter().take(MAX_IOV).map(|b| IoSlice::new(b)).collect();
            half.write_vectored(&iov).await?
        };
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        let mut left = n;
        while left > 0 {
            let Some(front) = segs.front_mut() else { break };
            if front.len() <= left {
                left -= front.len();
                segs.pop_front();
            } else {
                front.advance(left);
                left = 0;
            }
        }
    }
    Ok(())
}

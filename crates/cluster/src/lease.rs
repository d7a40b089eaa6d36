//! A router's lease and its self-fencing clock.
//!
//! The router holds one etcd lease and renews it every third of its time to
//! live. After every renewal the router may acknowledge I/O until
//! `sent + ttl - margin`, where `sent` is when the renewal left (before etcd
//! received it, so before etcd's own expiry clock restarted) and `margin`
//! covers clock-rate differences between this machine and etcd's leader.
//! etcd deletes the router's leased keys only after `ttl` without a renewal
//! it received, so the router's deadline always passes before any other
//! router can see it as down and take anything over from it. [`Fence`]
//! answers "may I still acknowledge?" with one atomic load and a clock read.
//!
//! Losing etcd is not losing the lease. When renewals fail, the router
//! probes every etcd member: a member that refuses the connection (its
//! process is not running) or answers without a leader cannot be part of a
//! working quorum. If a majority of the members is shown unable, no
//! transaction can commit, so no other router can take anything over, and
//! a newly elected leader restarts every lease's full time to live (etcd
//! 3.4 without `--experimental-enable-lease-checkpoint`). The deadline then
//! moves to `probe sent + ttl - margin`, and I/O goes on while etcd is
//! down. A router that cannot show that (an etcd member it cannot reach at
//! all may be in a quorum it is cut off from) lets its deadline pass and
//! stops acknowledging: that is the partitioned router, which others may
//! replace.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use etcd_client::Client;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::error::{ClusterError, ClusterResult};
use crate::store::{Store, bounded};

/// The self-fencing clock: whether this router may still acknowledge I/O
/// and change the backend. Cheap enough for every command.
#[derive(Debug)]
pub struct Fence {
    base: Instant,
    /// Nanoseconds after `base` until which acknowledging is safe (0: not).
    deadline_ns: AtomicU64,
}

impl Fence {
    fn new() -> Self {
        Fence {
            base: Instant::now(),
            deadline_ns: AtomicU64::new(0),
        }
    }

    /// A closed fence; a lease grant opens it.
    pub fn closed() -> Arc<Fence> {
        Arc::new(Fence::new())
    }

    /// A fence that never closes (a router without a cluster).
    pub fn always_open() -> Arc<Fence> {
        let f = Fence::new();
        f.deadline_ns.store(u64::MAX, Ordering::Release);
        Arc::new(f)
    }

    fn ns(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.base).as_nanos()).unwrap_or(u64::MAX)
    }

    /// Whether acknowledging is safe right now.
    pub fn is_open(&self) -> bool {
        let d = self.deadline_ns.load(Ordering::Acquire);
        d == u64::MAX || self.ns(Instant::now()) < d
    }

    /// How long acknowledging stays safe without another renewal.
    pub fn remaining(&self) -> Duration {
        let d = self.deadline_ns.load(Ordering::Acquire);
        if d == u64::MAX {
            return Duration::MAX;
        }
        Duration::from_nanos(d.saturating_sub(self.ns(Instant::now())))
    }

    /// Moves the deadline to `until` if that is later.
    fn extend_to(&self, until: Instant) {
        self.deadline_ns.fetch_max(self.ns(until), Ordering::AcqRel);
    }

    /// Moves the deadline to `until` whether or not it is later (a renewal
    /// answer is authoritative).
    fn set(&self, until: Instant) {
        self.deadline_ns.store(self.ns(until), Ordering::Release);
    }

    /// Closes the fence at once.
    fn close(&self) {
        self.deadline_ns.store(0, Ordering::Release);
    }
}

/// What the renewal loop reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseStatus {
    /// Renewed within the last period.
    Live,
    /// Renewals are failing; the fence closes at its deadline unless etcd
    /// is shown to have lost its quorum.
    Renewing,
    /// etcd has no quorum (a majority of members shown down or leaderless):
    /// I/O goes on, management changes fail.
    EtcdDown,
    /// etcd answered that the lease is gone: everything leased under it is
    /// deleted and another router may have taken over. The holder must
    /// register again and re-validate every ownership.
    Expired,
}

/// A granted lease with its renewal task.
#[derive(Debug)]
pub struct Lease {
    id: i64,
    ttl: Duration,
    fence: Arc<Fence>,
    status: watch::Receiver<LeaseStatus>,
    stop: CancellationToken,
}

/// The part of the time to live kept as a safety margin.
pub fn margin(ttl: Duration) -> Duration {
    (ttl / 5).max(Duration::from_millis(500)).min(ttl / 2)
}

impl Lease {
    /// Grants a lease of `ttl` and starts renewing it on the current tokio
    /// runtime. The fence opens with the grant.
    pub async fn grant(store: &Store, ttl: Duration, fence: Arc<Fence>) -> ClusterResult<Lease> {
        let secs = i64::try_from(ttl.as_secs().max(2)).unwrap_or(i64::MAX);
        let mut c = store.client();
        let sent = Instant::now();
        let r = bounded(store.timeout(), c.lease_grant(secs, None)).await?;
        if !r.error().is_empty() {
            return Err(ClusterError::Unavailable(format!(
                "lease grant refused: {}",
                r.error()
            )));
        }
        let granted = Duration::from_secs(u64::try_from(r.ttl()).unwrap_or(0));
        fence.set(sent + granted.saturating_sub(margin(granted)));
        let (tx, rx) = watch::channel(LeaseStatus::Live);
        let stop = CancellationToken::new();
        let id = r.id();
        tokio::spawn(renew(
            store.clone(),
            id,
            granted,
            fence.clone(),
            tx,
            stop.clone(),
        ));
        Ok(Lease {
            id,
            ttl: granted,
            fence,
            status: rx,
            stop,
        })
    }

    /// The lease id (keys put with it vanish when it expires).
    pub fn id(&self) -> i64 {
        self.id
    }

    /// The granted time to live.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The fence this lease keeps open.
    pub fn fence(&self) -> &Arc<Fence> {
        &self.fence
    }

    /// The renewal status, as it changes.
    pub fn status(&self) -> watch::Receiver<LeaseStatus> {
        self.status.clone()
    }

    /// Stops renewing and revokes the lease (an orderly shutdown: the
    /// router's leased keys vanish at once instead of after the TTL).
    pub async fn revoke(self, store: &Store) {
        self.stop.cancel();
        self.fence.close();
        let mut c = store.client();
        let _ = bounded(store.timeout(), c.lease_revoke(self.id)).await;
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The renewal loop.
async fn renew(
    store: Store,
    id: i64,
    ttl: Duration,
    fence: Arc<Fence>,
    status: watch::Sender<LeaseStatus>,
    stop: CancellationToken,
) {
    let period = ttl / 3;
    let keep = ttl.saturating_sub(margin(ttl));
    let mut stream = None;
    let mut next = Instant::now() + period;
    let mut renewals = 0u64;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep_until(next.into()) => {}
        }
        let sent = Instant::now();
        match renew_once(&store, id, &mut stream).await {
            Ok(Some(granted)) => {
                fence.set(sent + granted.saturating_sub(margin(granted)));
                status.send_replace(LeaseStatus::Live);
                next = sent + period;
                renewals += 1;
                if renewals.is_multiple_of(16) {
                    // Membership changes are rare; keep the probe list fresh.
                    let _ = store.refresh_members().await;
                }
            }
            Ok(None) => {
                tracing::error!(
                    lease = id,
                    "etcd says the lease expired; fencing this router"
                );
                fence.close();
                status.send_replace(LeaseStatus::Expired);
                return;
            }
            Err(e) => {
                stream = None;
                let probe_sent = Instant::now();
                if quorum_lost(&store).await {
                    fence.extend_to(probe_sent + keep);
                    if *status.borrow() != LeaseStatus::EtcdDown {
                        tracing::warn!(error = %e, "etcd has lost its quorum: I/O goes on, management changes fail");
                    }
                    status.send_replace(LeaseStatus::EtcdDown);
                } else {
                    if *status.borrow() != LeaseStatus::Renewing {
                        tracing::warn!(error = %e, remaining_ms = u64::try_from(fence.remaining().as_millis()).unwrap_or(u64::MAX),
                            "cannot renew the router lease; I/O stops when it lapses");
                    }
                    status.send_replace(LeaseStatus::Renewing);
                }
                // Retry soon, but not in a tight loop.
                next = Instant::now() + Duration::from_millis(500).min(period);
            }
        }
    }
}

type KeepAlive = (etcd_client::LeaseKeeper, etcd_client::LeaseKeepAliveStream);

/// One renewal. `Ok(None)`: the lease no longer exists.
async fn renew_once(
    store: &Store,
    id: i64,
    stream: &mut Option<KeepAlive>,
) -> ClusterResult<Option<Duration>> {
    if stream.is_none() {
        // Opening the stream renews once and reads the answer.
        let mut c = store.client();
        match tokio::time::timeout(store.timeout(), c.lease_keep_alive(id)).await {
            Ok(Ok(s)) => *stream = Some(s),
            Ok(Err(etcd_client::Error::LeaseKeepAliveError(m))) if m.contains("not found") => {
                return Ok(None);
            }
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => {
                return Err(ClusterError::Unavailable(
                    "no answer to the lease renewal in time".into(),
                ));
            }
        }
        let mut c = store.client();
        let r = bounded(store.timeout(), c.lease_time_to_live(id, None)).await?;
        return Ok((r.ttl() > 0).then(|| Duration::from_secs(u64::try_from(r.ttl()).unwrap_or(0))));
    }
    let Some((keeper, responses)) = stream.as_mut() else {
        return Err(ClusterError::Unavailable("no keep-alive stream".into()));
    };
    bounded(store.timeout(), keeper.keep_alive()).await?;
    let r = bounded(store.timeout(), responses.message()).await?;
    match r {
        Some(r) if r.ttl() > 0 => Ok(Some(Duration::from_secs(
            u64::try_from(r.ttl()).unwrap_or(0),
        ))),
        Some(_) => Ok(None),
        None => Err(ClusterError::Unavailable("keep-alive stream closed".into())),
    }
}

/// How one etcd member answered a probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberProbe {
    /// It answers and knows a leader: a quorum may be working.
    Leader,
    /// It answers (or refuses with "no leader") without a leader.
    NoLeader,
    /// Its port refuses connections: the member's process is not running.
    Refused,
    /// No answer in time: it may be alive behind a partition.
    Unknown,
}

/// Probes one etcd client URL.
pub async fn probe_member(store: &Store, endpoint: &str) -> MemberProbe {
    let opts = store.options().clone().with_require_leader(false);
    let limit = store.timeout();
    let fut = async {
        let mut c = Client::connect([endpoint], Some(opts)).await?;
        c.status().await
    };
    match tokio::time::timeout(limit, fut).await {
        Ok(Ok(s)) if s.leader() != 0 => MemberProbe::Leader,
        Ok(Ok(_)) => MemberProbe::NoLeader,
        Ok(Err(e)) if refused(&e) => MemberProbe::Refused,
        Ok(Err(e)) if e.to_string().contains("no leader") => MemberProbe::NoLeader,
        _ => MemberProbe::Unknown,
    }
}

/// Whether a majority of etcd's members (all of them, as etcd last listed
/// them, not only the configured endpoints) is shown unable to form a
/// quorum.
pub async fn quorum_lost(store: &Store) -> bool {
    let eps = store.members();
    let probes = futures::future::join_all(eps.iter().map(|e| probe_member(store, e))).await;
    let unable = probes
        .iter()
        .filter(|p| matches!(p, MemberProbe::NoLeader | MemberProbe::Refused))
        .count();
    unable * 2 > eps.len()
}

/// Whether an etcd client error is a refused TCP connection.
fn refused(e: &etcd_client::Error) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::ConnectionRefused
        {
            return true;
        }
        cur = err.source();
    }
    e.to_string().contains("Connection refused")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn margin_is_a_fifth_within_bounds() {
        assert_eq!(margin(Duration::from_secs(10)), Duration::from_secs(2));
        assert_eq!(margin(Duration::from_secs(2)), Duration::from_millis(500));
        assert_eq!(
            margin(Duration::from_millis(600)),
            Duration::from_millis(300)
        );
    }

    #[test]
    fn fence_opens_until_its_deadline() {
        let f = Fence::new();
        assert!(!f.is_open());
        f.set(Instant::now() + Duration::from_secs(5));
        assert!(f.is_open());
        assert!(f.remaining() > Duration::from_secs(4));
        f.extend_to(Instant::now());
        assert!(f.is_open(), "extend_to never moves the deadline earlier");
        f.set(Instant::now());
        std::thread::sleep(Duration::from_millis(2));
        assert!(!f.is_open());
        f.close();
        assert_eq!(f.remaining(), Duration::ZERO);
        assert!(Fence::always_open().is_open());
    }
}

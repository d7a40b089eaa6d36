//! Prometheus metrics: the daemon's single registry, the metric families
//! (all named `depot_*` with their unit in the name; docs/metrics.md lists
//! them); [`MeteredDevice`] (`crate::metered`) counts every vDisk's I/O
//! into them.
//!
//! Invariants: per-vDisk series are labelled `vm` and `vdisk` and removed
//! when the vDisk is deleted; pool and session numbers are sampled from the
//! engine and the target registry when `/metrics` is scraped, so the render
//! is always current and costs nothing on the I/O path. The cluster
//! families ([`ClusterSample`]) are replaced as a whole at every scrape of
//! a clustered router, under one lock with the render, so a scrape never
//! shows a vDisk under two owners or a router that left; a standalone
//! router never sets them, and families without series are not rendered.

use std::sync::Arc;
use std::time::Duration;

use depot_block::BlockDevice;
use depot_cluster::LeaseStatus;
use prometheus::core::{Atomic, GenericCounter};
use prometheus::{
    CounterVec, Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::metered::MeteredDevice;

/// Every metric family of the daemon.
pub struct Metrics {
    registry: Registry,
    read_ops: IntCounterVec,
    write_ops: IntCounterVec,
    flush_ops: IntCounterVec,
    unmap_ops: IntCounterVec,
    read_bytes: IntCounterVec,
    write_bytes: IntCounterVec,
    io_errors: IntCounterVec,
    read_latency: HistogramVec,
    write_latency: HistogramVec,
    queue_depth: IntGaugeVec,
    vdisk_size: IntGaugeVec,
    /// Per vPool: fraction of the write buffers filled with unshipped data.
    pub vpool_write_buffer_fill: GaugeVec,
    /// Per vPool: bytes written but not yet on the backend.
    pub vpool_waiting: IntGaugeVec,
    /// Per vPool: failed backend calls (uploads and downloads).
    pub vpool_upload_errors: IntCounterVec,
    /// Per vPool: read-cache hit ratio.
    pub vpool_hit_ratio: GaugeVec,
    /// Per vPool: read-cache dedup ratio.
    pub vpool_dedup_ratio: GaugeVec,
    /// Per vPool: logical bytes provisioned to its vDisks.
    pub vpool_logical: IntGaugeVec,
    /// Per vPool: bytes on flash.
    pub vpool_flash: IntGaugeVec,
    /// Per vPool: bytes on the backend (estimate).
    pub vpool_backend: IntGaugeVec,
    /// Per vPool: bytes uploaded.
    pub vpool_uploaded: IntCounterVec,
    /// Per vPool: clusters rewritten contiguously by relocation on read.
    pub vpool_relocated: IntCounterVec,
    /// Clusters rewritten in place.
    pub vpool_rewritten: IntCounterVec,
    /// Superseded clusters dropped from the page cache.
    pub vpool_dropped: IntCounterVec,
    /// Per vPool: time writes waited because a write buffer was full.
    pub vpool_throttle_seconds: CounterVec,
    /// Sessions per target.
    pub sessions: IntGaugeVec,
    cluster: ClusterFamilies,
    /// Serializes a scrape's cluster sampling with its render.
    scrape: parking_lot::Mutex<()>,
}

/// The families only a clustered router fills ([`Metrics::set_cluster`]).
struct ClusterFamilies {
    router_info: IntGaugeVec,
    lease_remaining: GaugeVec,
    lease_state: IntGaugeVec,
    vdisks_owned: IntGaugeVec,
    router_up: IntGaugeVec,
    vdisk_owner: IntGaugeVec,
    vdisk_generation: IntGaugeVec,
    dtl_state: IntGaugeVec,
    dtl_sent: IntGaugeVec,
    dtl_degradations: IntGaugeVec,
    dtl_refused: IntCounter,
    dtl_takeovers: IntCounter,
    peer_refused: IntCounterVec,
}

/// The largest lease time to live `depot serve` accepts (`lease_ttl_secs`);
/// the fence can never be open longer, so the remaining time is clamped to
/// it (a fence that never closes would otherwise render as 5.8e11 years).
pub const MAX_LEASE_SECS: f64 = 300.0;

/// What a clustered router reports of itself and of its view of the
/// cluster at one scrape.
#[derive(Debug, Clone)]
pub struct ClusterSample {
    /// This router's name.
    pub router: String,
    /// Its portal group tag.
    pub tpgt: u16,
    /// Its lease's renewal status (`None`: no lease held).
    pub lease: Option<LeaseStatus>,
    /// How long it may still acknowledge I/O without another renewal.
    pub fence_remaining: Duration,
    /// Every member of the cluster and whether its lease lives.
    pub routers: Vec<(String, bool)>,
    /// Every vDisk with an owner.
    pub vdisks: Vec<VDiskOwner>,
    /// The mirror of every vDisk this router serves.
    pub mirrors: Vec<(String, String, depot_dtl::MirrorStatus)>,
}

/// One vDisk's ownership as the router's view holds it.
#[derive(Debug, Clone)]
pub struct VDiskOwner {
    /// Its VM.
    pub vm: String,
    /// The vDisk.
    pub vdisk: String,
    /// The router that owns it.
    pub owner: String,
    /// The ownership's generation.
    pub generation: u64,
}

/// The `state` label of `depot_router_lease_state` (one series per value).
pub const LEASE_STATES: [&str; 4] = ["live", "renewing", "etcd_down", "expired"];

fn lease_state(s: Option<LeaseStatus>) -> &'static str {
    match s {
        Some(LeaseStatus::Live) => "live",
        Some(LeaseStatus::Renewing) => "renewing",
        Some(LeaseStatus::EtcdDown) => "etcd_down",
        Some(LeaseStatus::Expired) | None => "expired",
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

fn reg<C: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: C) -> C {
    // Names are static and unique, so registration cannot fail.
    if let Err(e) = r.register(Box::new(c.clone())) {
        tracing::error!(error = %e, "metric registration failed");
    }
    c
}

impl Metrics {
    /// Creates the registry and every family.
    pub fn new() -> Arc<Metrics> {
        let r = Registry::new();
        let disk = ["vm", "vdisk"];
        let pool = ["vpool"];
        let icv = |name: &str, help: &str, labels: &[&str]| {
            reg(
                &r,
                IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"),
            )
        };
        let igv = |name: &str, help: &str, labels: &[&str]| {
            reg(
                &r,
                IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric"),
            )
        };
        let gv = |name: &str, help: &str, labels: &[&str]| {
            reg(
                &r,
                GaugeVec::new(Opts::new(name, help), labels).expect("valid metric"),
            )
        };
        let buckets = prometheus::exponential_buckets(50e-6, 2.0, 18).expect("valid buckets");
        let hist = |name: &str, help: &str| {
            reg(
                &r,
                HistogramVec::new(
                    HistogramOpts::new(name, help).buckets(buckets.clone()),
                    &disk,
                )
                .expect("valid metric"),
            )
        };
        Arc::new(Metrics {
            read_ops: icv(
                "depot_vdisk_read_ops_total",
                "Read commands completed.",
                &disk,
            ),
            write_ops: icv(
                "depot_vdisk_write_ops_total",
                "Write commands completed.",
                &disk,
            ),
            flush_ops: icv("depot_vdisk_flush_ops_total", "Cache flushes.", &disk),
            unmap_ops: icv("depot_vdisk_unmap_ops_total", "Unmap requests.", &disk),
            read_bytes: icv("depot_vdisk_read_bytes_total", "Bytes read.", &disk),
            write_bytes: icv("depot_vdisk_write_bytes_total", "Bytes written.", &disk),
            io_errors: icv(
                "depot_vdisk_io_errors_total",
                "I/O requests that failed.",
                &disk,
            ),
            read_latency: hist("depot_vdisk_read_latency_seconds", "Read latency."),
            write_latency: hist("depot_vdisk_write_latency_seconds", "Write latency."),
            queue_depth: igv(
                "depot_vdisk_queue_depth",
                "I/O requests in flight on the device.",
                &disk,
            ),
            vdisk_size: igv("depot_vdisk_size_bytes", "Provisioned size.", &disk),
            vpool_write_buffer_fill: gv(
                "depot_vpool_write_buffer_fill_ratio",
                "Unshipped data over the write buffers of the open vDisks (0..1).",
                &pool,
            ),
            vpool_waiting: igv(
                "depot_vpool_ship_pending_bytes",
                "Bytes written but not yet on the backend.",
                &pool,
            ),
            vpool_upload_errors: icv(
                "depot_vpool_backend_errors_total",
                "Failed backend calls (each retried).",
                &pool,
            ),
            vpool_hit_ratio: gv(
                "depot_vpool_read_cache_hit_ratio",
                "Read-cache hits over lookups (0..1).",
                &pool,
            ),
            vpool_dedup_ratio: gv(
                "depot_vpool_read_cache_dedup_ratio",
                "Logical over stored bytes in the read cache (>= 1).",
                &pool,
            ),
            vpool_logical: igv(
                "depot_vpool_logical_bytes",
                "Logical size provisioned to the vPool's vDisks.",
                &pool,
            ),
            vpool_flash: igv(
                "depot_vpool_flash_bytes",
                "Bytes of containers and logs on flash.",
                &pool,
            ),
            vpool_backend: igv(
                "depot_vpool_backend_bytes",
                "Bytes stored on the backend (estimate).",
                &pool,
            ),
            vpool_uploaded: icv(
                "depot_vpool_uploaded_bytes_total",
                "Bytes uploaded to the backend.",
                &pool,
            ),
            vpool_relocated: icv(
                "depot_vpool_relocated_clusters_total",
                "Clusters rewritten contiguously by relocation on read.",
                &pool,
            ),
            vpool_rewritten: icv(
                "depot_vpool_rewritten_clusters_total",
                "Clusters rewritten in place (recent data, not yet shipped).",
                &pool,
            ),
            vpool_dropped: icv(
                "depot_vpool_page_cache_dropped_clusters_total",
                "Superseded clusters dropped from the page cache.",
                &pool,
            ),
            vpool_throttle_seconds: reg(
                &r,
                CounterVec::new(
                    Opts::new(
                        "depot_vpool_write_throttle_seconds_total",
                        "Time writes waited for uploads because their vDisk's write buffer was full, summed over writes.",
                    ),
                    &pool,
                )
                .expect("valid metric"),
            ),
            sessions: igv(
                "depot_target_sessions",
                "Logged-in iSCSI sessions per VM target.",
                &["vm"],
            ),
            cluster: ClusterFamilies {
                router_info: igv(
                    "depot_router_info",
                    "This router of the cluster (always 1): its name and portal group tag.",
                    &["router", "tpgt"],
                ),
                lease_remaining: gv(
                    "depot_router_lease_remaining_seconds",
                    "How long this router may still acknowledge I/O without another lease renewal.",
                    &["router"],
                ),
                lease_state: igv(
                    "depot_router_lease_state",
                    "This router's lease: 1 for the current state (live, renewing, etcd_down, expired), 0 for the others.",
                    &["router", "state"],
                ),
                vdisks_owned: igv(
                    "depot_router_vdisks_owned",
                    "vDisks this router owns (serves the I/O of).",
                    &["router"],
                ),
                router_up: igv(
                    "depot_cluster_router_up",
                    "Each member of the cluster as this router sees it: 1 while its lease lives.",
                    &["router"],
                ),
                vdisk_owner: igv(
                    "depot_vdisk_owner_info",
                    "The router that owns each vDisk of the cluster (always 1).",
                    &["vm", "vdisk", "owner"],
                ),
                vdisk_generation: igv(
                    "depot_vdisk_generation",
                    "The generation of each vDisk's ownership (only grows).",
                    &disk,
                ),
                dtl_state: igv(
                    "depot_vdisk_dtl_state",
                    "The mirror (DTL) of each vDisk this router serves: 1 for the current state (in_sync, catching_up, degraded), 0 for the others.",
                    &["vm", "vdisk", "state"],
                ),
                dtl_sent: igv(
                    "depot_vdisk_dtl_sent_bytes",
                    "Bytes this router copied to the vDisk's mirror since it began serving it.",
                    &disk,
                ),
                dtl_degradations: igv(
                    "depot_vdisk_dtl_degradations",
                    "Times the vDisk's mirror went degraded since this router began serving it.",
                    &disk,
                ),
                dtl_refused: reg(
                    &r,
                    IntCounter::new(
                        "depot_dtl_refused_total",
                        "DTL requests refused because the sender does not own the vDisk.",
                    )
                    .expect("valid metric"),
                ),
                dtl_takeovers: reg(
                    &r,
                    IntCounter::new(
                        "depot_dtl_takeovers_total",
                        "vDisks this router took over from an in-sync mirror it held.",
                    )
                    .expect("valid metric"),
                ),
                peer_refused: reg(
                    &r,
                    IntCounterVec::new(
                        Opts::new(
                            "depot_peer_refused_total",
                            "Router-to-router connections refused, by reason: tls (no certificate of this cluster), name (the certificate names another router), member (not a member), hello (no valid hello in time).",
                        ),
                        &["reason"],
                    )
                    .expect("valid metric"),
                ),
            },
            scrape: parking_lot::Mutex::new(()),
            registry: r,
        })
    }

    /// Wraps a vDisk's device so its I/O is counted.
    pub fn meter(&self, vm: &str, vdisk: &str, inner: Arc<dyn BlockDevice>) -> MeteredDevice {
        let l = [vm, vdisk];
        self.vdisk_size.with_label_values(&l).set(
            i64::try_from(inner.num_blocks() * u64::from(inner.block_size())).unwrap_or(i64::MAX),
        );
        MeteredDevice {
            read_ops: self.read_ops.with_label_values(&l),
            write_ops: self.write_ops.with_label_values(&l),
            flush_ops: self.flush_ops.with_label_values(&l),
            unmap_ops: self.unmap_ops.with_label_values(&l),
            read_bytes: self.read_bytes.with_label_values(&l),
            write_bytes: self.write_bytes.with_label_values(&l),
            errors: self.io_errors.with_label_values(&l),
            read_latency: self.read_latency.with_label_values(&l),
            write_latency: self.write_latency.with_label_values(&l),
            depth: self.queue_depth.with_label_values(&l),
            size: self.vdisk_size.with_label_values(&l),
            inner,
        }
    }

    /// Counts a DTL request refused (its sender does not own the vDisk).
    pub fn dtl_refused(&self) {
        self.cluster.dtl_refused.inc();
    }

    /// Counts a router-to-router connection refused, and why.
    pub fn peer_refused(&self, why: depot_peer::Refusal) {
        self.cluster
            .peer_refused
            .with_label_values(&[why.as_str()])
            .inc();
    }

    /// Counts a takeover from a mirror held here.
    pub fn dtl_takeover(&self) {
        self.cluster.dtl_takeovers.inc();
    }

    /// Forgets a deleted vDisk's series.
    pub fn forget_vdisk(&self, vm: &str, vdisk: &str) {
        let l = [vm, vdisk];
        let _ = self.read_ops.remove_label_values(&l);
        let _ = self.write_ops.remove_label_values(&l);
        let _ = self.flush_ops.remove_label_values(&l);
        let _ = self.unmap_ops.remove_label_values(&l);
        let _ = self.read_bytes.remove_label_values(&l);
        let _ = self.write_bytes.remove_label_values(&l);
        let _ = self.io_errors.remove_label_values(&l);
        let _ = self.read_latency.remove_label_values(&l);
        let _ = self.write_latency.remove_label_values(&l);
        let _ = self.queue_depth.remove_label_values(&l);
        let _ = self.vdisk_size.remove_label_values(&l);
    }

    /// Forgets a deleted vPool's series.
    pub fn forget_vpool(&self, vpool: &str) {
        let l = [vpool];
        let _ = self.vpool_write_buffer_fill.remove_label_values(&l);
        let _ = self.vpool_waiting.remove_label_values(&l);
        let _ = self.vpool_upload_errors.remove_label_values(&l);
        let _ = self.vpool_hit_ratio.remove_label_values(&l);
        let _ = self.vpool_dedup_ratio.remove_label_values(&l);
        let _ = self.vpool_logical.remove_label_values(&l);
        let _ = self.vpool_flash.remove_label_values(&l);
        let _ = self.vpool_backend.remove_label_values(&l);
        let _ = self.vpool_uploaded.remove_label_values(&l);
        let _ = self.vpool_relocated.remove_label_values(&l);
        let _ = self.vpool_rewritten.remove_label_values(&l);
        let _ = self.vpool_dropped.remove_label_values(&l);
        let _ = self.vpool_throttle_seconds.remove_label_values(&l);
    }

    /// Raises a counter (integer or float) to an absolute value sampled
    /// from elsewhere.
    pub fn set_counter<P: Atomic>(c: &GenericCounter<P>, value: P::T) {
        let cur = c.get();
        if value > cur {
            let mut delta = value;
            delta -= cur;
            c.inc_by(delta);
        }
    }

    /// Replaces the cluster families with `s` (a clustered router, at
    /// every scrape; see [`Metrics::render_with`]).
    fn set_cluster(&self, s: &ClusterSample) {
        let c = &self.cluster;
        c.router_info.reset();
        c.lease_remaining.reset();
        c.lease_state.reset();
        c.vdisks_owned.reset();
        c.router_up.reset();
        c.vdisk_owner.reset();
        c.vdisk_generation.reset();
        c.dtl_state.reset();
        c.dtl_sent.reset();
        c.dtl_degradations.reset();
        for (vm, vdisk, m) in &s.mirrors {
            let (vm, vdisk) = (vm.as_str(), vdisk.as_str());
            for state in [
                depot_dtl::MirrorState::InSync,
                depot_dtl::MirrorState::CatchingUp,
                depot_dtl::MirrorState::Degraded,
            ] {
                c.dtl_state
                    .with_label_values(&[vm, vdisk, state.as_str()])
                    .set(i64::from(m.state == state));
            }
            c.dtl_sent
                .with_label_values(&[vm, vdisk])
                .set(i64::try_from(m.bytes_sent).unwrap_or(i64::MAX));
            c.dtl_degradations
                .with_label_values(&[vm, vdisk])
                .set(i64::try_from(m.degradations).unwrap_or(i64::MAX));
        }
        let me = s.router.as_str();
        c.router_info
            .with_label_values(&[me, s.tpgt.to_string().as_str()])
            .set(1);
        c.lease_remaining
            .with_label_values(&[me])
            .set(s.fence_remaining.as_secs_f64().min(MAX_LEASE_SECS));
        let current = lease_state(s.lease);
        for state in LEASE_STATES {
            c.lease_state
                .with_label_values(&[me, state])
                .set(i64::from(state == current));
        }
        for (router, up) in &s.routers {
            c.router_up
                .with_label_values(&[router.as_str()])
                .set(i64::from(*up));
        }
        let mut owned = 0i64;
        for d in &s.vdisks {
            c.vdisk_owner
                .with_label_values(&[d.vm.as_str(), d.vdisk.as_str(), d.owner.as_str()])
                .set(1);
            c.vdisk_generation
                .with_label_values(&[d.vm.as_str(), d.vdisk.as_str()])
                .set(i64::try_from(d.generation).unwrap_or(i64::MAX));
            owned += i64::from(d.owner == me);
        }
        c.vdisks_owned.with_label_values(&[me]).set(owned);
    }

    /// The text exposition of every metric, with the cluster families
    /// replaced by `cluster` first when given (one scrape at a time, so a
    /// render never sees another scrape's half-filled cluster families).
    pub fn render_with(&self, cluster: Option<&ClusterSample>) -> String {
        let _scrape = self.scrape.lock();
        if let Some(s) = cluster {
            self.set_cluster(s);
        }
        self.render_now()
    }

    fn render_now(&self) -> String {
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        String::from_utf8_lossy(&buf).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use depot_block::MemDevice;

    #[test]
    fn counts_io_and_renders() {
        let m = Metrics::new();
        let dev = m.meter("vm1", "d1", Arc::new(MemDevice::new(512, 64)));
        dev.write(0, &[1u8; 1024], false).unwrap();
        let mut buf = [0u8; 512];
        dev.read(1, &mut buf).unwrap();
        assert!(dev.read(64, &mut buf).is_err());
        // Inline (non-blocking) I/O is counted like the blocking kind.
        assert!(dev.try_read_nowait(1, &mut buf).unwrap());
        assert!(dev.try_write_nowait(2, &[2u8; 512]).unwrap());
        let text = m.render_with(None);
        assert!(text.contains("depot_vdisk_write_bytes_total{vdisk=\"d1\",vm=\"vm1\"} 1536"));
        assert!(text.contains("depot_vdisk_read_ops_total{vdisk=\"d1\",vm=\"vm1\"} 2"));
        assert!(text.contains("depot_vdisk_io_errors_total{vdisk=\"d1\",vm=\"vm1\"} 1"));
        assert!(text.contains("depot_vdisk_queue_depth{vdisk=\"d1\",vm=\"vm1\"} 0"));
        m.forget_vdisk("vm1", "d1");
        assert!(!m.render_with(None).contains("vm1"));
    }

    fn sample(owner: &str, generation: u64, lease: Option<LeaseStatus>) -> ClusterSample {
        ClusterSample {
            router: "r1".into(),
            tpgt: 1,
            lease,
            fence_remaining: Duration::from_millis(7500),
            routers: vec![("r1".into(), true), ("r2".into(), false)],
            vdisks: vec![
                VDiskOwner {
                    vm: "web1".into(),
                    vdisk: "web1-root".into(),
                    owner: owner.into(),
                    generation,
                },
                VDiskOwner {
                    vm: "web1".into(),
                    vdisk: "web1-data".into(),
                    owner: "r1".into(),
                    generation: 12,
                },
            ],
            mirrors: vec![(
                "web1".into(),
                "web1-data".into(),
                depot_dtl::MirrorStatus {
                    mode: depot_dtl::Mode::Sync,
                    state: depot_dtl::MirrorState::Degraded,
                    holder: None,
                    bytes_sent: 4096,
                    queued: 0,
                    error: Some("holder down".into()),
                    degradations: 1,
                },
            )],
        }
    }

    #[test]
    fn a_standalone_router_renders_no_cluster_family() {
        let m = Metrics::new();
        let _dev = m.meter("vm1", "d1", Arc::new(MemDevice::new(512, 64)));
        let text = m.render_with(None);
        for name in [
            "depot_router_",
            "depot_cluster_",
            "depot_vdisk_owner_info",
            "depot_vdisk_generation",
        ] {
            assert!(!text.contains(name), "{name} in\n{text}");
        }
    }

    #[test]
    fn cluster_families_show_this_router_the_members_and_owners() {
        let m = Metrics::new();
        let text = m.render_with(Some(&sample("r2", 40, Some(LeaseStatus::Live))));
        for line in [
            "depot_router_info{router=\"r1\",tpgt=\"1\"} 1",
            "depot_router_lease_remaining_seconds{router=\"r1\"} 7.5",
            "depot_router_lease_state{router=\"r1\",state=\"live\"} 1",
            "depot_router_lease_state{router=\"r1\",state=\"renewing\"} 0",
            "depot_router_lease_state{router=\"r1\",state=\"etcd_down\"} 0",
            "depot_router_lease_state{router=\"r1\",state=\"expired\"} 0",
            "depot_router_vdisks_owned{router=\"r1\"} 1",
            "depot_cluster_router_up{router=\"r1\"} 1",
            "depot_cluster_router_up{router=\"r2\"} 0",
            "depot_vdisk_owner_info{owner=\"r2\",vdisk=\"web1-root\",vm=\"web1\"} 1",
            "depot_vdisk_owner_info{owner=\"r1\",vdisk=\"web1-data\",vm=\"web1\"} 1",
            "depot_vdisk_generation{vdisk=\"web1-root\",vm=\"web1\"} 40",
            "depot_vdisk_generation{vdisk=\"web1-data\",vm=\"web1\"} 12",
            "depot_vdisk_dtl_state{state=\"degraded\",vdisk=\"web1-data\",vm=\"web1\"} 1",
            "depot_vdisk_dtl_state{state=\"in_sync\",vdisk=\"web1-data\",vm=\"web1\"} 0",
            "depot_vdisk_dtl_sent_bytes{vdisk=\"web1-data\",vm=\"web1\"} 4096",
            "depot_vdisk_dtl_degradations{vdisk=\"web1-data\",vm=\"web1\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
        }
        // The next scrape replaces everything: the moved vDisk has one
        // owner, a member that left is gone, an unbounded fence is clamped.
        let mut s = sample("r1", 41, Some(LeaseStatus::Renewing));
        s.routers.pop();
        s.fence_remaining = Duration::MAX;
        let text = m.render_with(Some(&s));
        assert!(!text.contains("owner=\"r2\""), "{text}");
        assert!(!text.contains("router=\"r2\""), "{text}");
        for line in [
            "depot_vdisk_owner_info{owner=\"r1\",vdisk=\"web1-root\",vm=\"web1\"} 1",
            "depot_vdisk_generation{vdisk=\"web1-root\",vm=\"web1\"} 41",
            "depot_router_vdisks_owned{router=\"r1\"} 2",
            "depot_router_lease_state{router=\"r1\",state=\"live\"} 0",
            "depot_router_lease_state{router=\"r1\",state=\"renewing\"} 1",
            "depot_router_lease_remaining_seconds{router=\"r1\"} 300",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
        }
        // No lease held (the router left): expired.
        let text = m.render_with(Some(&sample("r1", 42, None)));
        assert!(
            text.contains("depot_router_lease_state{router=\"r1\",state=\"expired\"} 1"),
            "{text}"
        );
    }
}

//! Sampling the live numbers of the node into the metrics when `/metrics`
//! is scraped: per vPool the engine's statistics and the logical bytes of
//! its vDisks, per VM the logged-in sessions, and on a clustered router
//! itself (name, lease, fence) and its view of the cluster (members up or
//! down, each vDisk's owner and generation).
//!
//! Invariants: sampling only reads the state (under the lock), the
//! cluster view (taken after the state lock, as everywhere) and the target
//! registry; the I/O path never waits for it.

use std::collections::BTreeMap;

use super::{Manager, State};
use crate::cluster::Node;
use crate::metrics::{ClusterSample, Metrics, VDiskOwner};
use crate::model::IQN_PREFIX;

/// This router and its view of the cluster, for the metrics.
fn cluster_sample(mgr: &Manager, node: &Node, st: &State) -> ClusterSample {
    let lease = node.lease_status().map(|rx| *rx.borrow());
    let view = node.view();
    ClusterSample {
        router: node.name().to_string(),
        tpgt: node.record().tpgt,
        lease,
        fence_remaining: node.fence().remaining(),
        routers: view
            .routers
            .keys()
            .map(|r| (r.clone(), view.is_up(r)))
            .collect(),
        vdisks: st
            .catalog
            .vdisks()
            .filter_map(|d| {
                view.owners.get(&d.info.name).map(|o| VDiskOwner {
                    vm: d.info.vm.clone(),
                    vdisk: d.info.name.clone(),
                    owner: o.router.clone(),
                    generation: o.generation,
                })
            })
            .collect(),
        mirrors: st
            .disks
            .iter()
            .filter_map(|(name, live)| {
                mgr.mirror_status(name)
                    .map(|m| (live.vm.clone(), name.clone(), m))
            })
            .collect(),
    }
}

impl Manager {
    /// Samples pool, session and (clustered) cluster numbers into the
    /// metrics and renders them.
    pub fn render_metrics(&self) -> String {
        let m = &self.metrics;
        let cluster = {
            let st = self.lock();
            let mut logical: BTreeMap<&str, u64> = BTreeMap::new();
            for d in st.catalog.vdisks() {
                if let Some(p) = &d.info.vpool {
                    *logical.entry(p.as_str()).or_default() += st
                        .disks
                        .get(&d.info.name)
                        .map_or(d.info.size_bytes, |l| l.size_bytes());
                }
            }
            for (name, pool) in &st.pools {
                let s = pool.stats();
                let l = [name.as_str()];
                let buffers = st
                    .catalog
                    .vpool(name)
                    .map_or(1, |p| p.policy.write_buffer_bytes)
                    .saturating_mul(s.volumes_open.max(1) as u64);
                m.vpool_write_buffer_fill
                    .with_label_values(&l)
                    .set(s.bytes_waiting_to_ship as f64 / buffers.max(1) as f64);
                m.vpool_waiting
                    .with_label_values(&l)
                    .set(i64::try_from(s.bytes_waiting_to_ship).unwrap_or(i64::MAX));
                Metrics::set_counter(
                    &m.vpool_upload_errors.with_label_values(&l),
                    s.backend_errors,
                );
                Metrics::set_counter(&m.vpool_uploaded.with_label_values(&l), s.bytes_uploaded);
                Metrics::set_counter(
                    &m.vpool_relocated.with_label_values(&l),
                    s.relocated_clusters,
                );
                Metrics::set_counter(
                    &m.vpool_rewritten.with_label_values(&l),
                    s.rewritten_clusters,
                );
                Metrics::set_counter(&m.vpool_dropped.with_label_values(&l), s.dropped_clusters);
                Metrics::set_counter(
                    &m.vpool_throttle_seconds.with_label_values(&l),
                    s.throttle_wait.as_secs_f64(),
                );
                m.vpool_hit_ratio
                    .with_label_values(&l)
                    .set(s.read_cache_hit_ratio);
                m.vpool_dedup_ratio
                    .with_label_values(&l)
                    .set(s.read_cache_dedup_ratio);
                m.vpool_logical.with_label_values(&l).set(
                    i64::try_from(logical.get(name.as_str()).copied().unwrap_or(0))
                        .unwrap_or(i64::MAX),
                );
                m.vpool_flash
                    .with_label_values(&l)
                    .set(i64::try_from(s.flash_bytes).unwrap_or(i64::MAX));
                m.vpool_backend
                    .with_label_values(&l)
                    .set(i64::try_from(s.backend_bytes_estimate).unwrap_or(i64::MAX));
            }
            let mut per: BTreeMap<String, i64> =
                st.catalog.vms().map(|v| (v.info.name.clone(), 0)).collect();
            for s in self.targets.sessions() {
                if let Some(vm) = s.target.strip_prefix(IQN_PREFIX)
                    && let Some(c) = per.get_mut(vm)
                {
                    *c += 1;
                }
            }
            for (vm, n) in per {
                m.sessions.with_label_values(&[vm.as_str()]).set(n);
            }
            self.cluster
                .as_ref()
                .map(|node| cluster_sample(self, node, &st))
        };
        m.render_with(cluster.as_ref())
    }
}

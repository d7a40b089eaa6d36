//! Durability: a write acknowledged with FUA, or followed by a completed
//! SYNCHRONIZE CACHE, survives `kill -9` of the daemon.

use std::process::Command;
use std::time::Duration;

use crate::common::{Depot, engine_vm_config, peer, qemu_io, qemu_io_with, run_timeout, vm_config};

#[test]
fn fua_and_synced_writes_survive_kill_9() {
    let mut depot = Depot::start(&vm_config("durable", "64M"));
    let url = depot.url("durable", 0);
    qemu_io(&url, &["write -f -P 0xa1 0 1M", "write -f -P 0xa2 5M 300k"]);
    qemu_io(
        &url,
        &["write -P 0xb1 10M 2M", "write -P 0xb2 20M 4k", "flush"],
    );
    depot.kill9();
    depot.respawn();
    let text = qemu_io(
        &url,
        &[
            "read -P 0xa1 0 1M",
            "read -P 0xa2 5M 300k",
            "read -P 0xb1 10M 2M",
            "read -P 0xb2 20M 4k",
            "read -P 0 30M 1M",
        ],
    );
    assert!(!text.contains("verification failed"), "{text}");
}

/// Engine vDisk, through a real initiator: rewrites of recent data go in
/// place (the counter says so), and `kill -9` keeps what was acknowledged.
/// A flushed write survives by the durability promise; the unflushed
/// rewrites after it survive too, because a process kill leaves the page
/// cache and every in-place rewrite wrote its tlog records first.
#[test]
fn in_place_rewrites_survive_kill_9() {
    let mut depot = Depot::start(&engine_vm_config("inplace", "64M"));
    let url = depot.url("inplace", 0);
    // Write-back cache mode: qemu-io's default (writethrough) makes every
    // write FUA, a hard barrier, and nothing would stay mutable.
    qemu_io_with(
        &url,
        &["-t", "writeback"],
        &[
            "write -P 0xa1 0 1M",
            "write -P 0xa2 0 1M",
            "write -P 0xa3 4M 1M",
            "flush",
            "write -P 0xa4 4M 1M",
            "write -P 0xa5 4M 1M",
            "write -P 0xa6 8M 64k",
            "write -P 0xa7 8M 64k",
        ],
    );
    let (status, m) = depot.http_get("/metrics");
    assert_eq!(status, 200);
    let rewritten: f64 = m
        .lines()
        .filter(|l| l.starts_with("depot_vpool_rewritten_clusters_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    // 0xa2 and 0xa5 (256 clusters each) and 0xa7 (16) went in place; 0xa4
    // appended, the flush had frozen 0xa3's slots.
    assert_eq!(rewritten, 528.0, "{m}");
    depot.kill9();
    depot.respawn();
    let text = qemu_io(
        &url,
        &[
            "read -P 0xa2 0 1M",
            "read -P 0xa5 4M 1M",
            "read -P 0xa7 8M 64k",
            "read -P 0 2M 1M",
        ],
    );
    assert!(!text.contains("verification failed"), "{text}");
}

#[test]
fn identity_is_stable_across_restarts() {
    let mut depot = Depot::start(&vm_config("ident", "16M"));
    let url = depot.url("ident", 0);
    let inq = |url: &str| {
        let mut out = String::new();
        for page in ["128", "131"] {
            let o = run_timeout(
                Command::new(peer("iscsi-inq"))
                    .args(["-e", "1", "-c", page])
                    .arg(url),
                Duration::from_secs(30),
            );
            assert!(
                o.status.success(),
                "iscsi-inq: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            out.push_str(&String::from_utf8_lossy(&o.stdout));
        }
        out
    };
    let before = inq(&url);
    assert!(before.contains("Unit Serial Number"), "{before}");
    depot.restart();
    assert_eq!(before, inq(&url));
}

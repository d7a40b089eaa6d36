//! Durability: a write acknowledged with FUA, or followed by a completed
//! SYNCHRONIZE CACHE, survives `kill -9` of the daemon.

use std::process::Command;
use std::time::Duration;

use crate::common::{Depot, peer, qemu_io, run_timeout, vm_config};

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

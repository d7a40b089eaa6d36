//! HA: each vDisk's unshipped writes are mirrored to another router (DTL),
//! and when its owner dies the router holding an in-sync mirror takes it
//! over by itself with every acknowledged write. Three routers, a real
//! 3-member etcd and moto S3; writes by `qemu-io` with `cache=directsync`
//! (each write is followed by SYNCHRONIZE CACHE, so a "wrote" line is a
//! write whose durability was promised), through a router that is not the
//! owner (the login is redirected to the owner, and to the new owner after
//! a takeover).
//!
//! `DEPOT_FAILOVER_ROUNDS` sets the rounds of the kill -9 test (default 10,
//! the CI run; `scripts/failover-soak.sh` runs 100).

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::cluster::{Grid, eventually};
use crate::common::*;

const VM: &str = "db1";
const DISK: &str = "db1-root";
/// Bytes per acknowledged write.
const CHUNK: u64 = 16 << 10;
/// Writes per round of the kill test: more than complete before the kill.
const PER_ROUND: u64 = 1500;

/// `vdisk show` through router `via`.
fn show(g: &Grid, via: usize) -> serde_json::Value {
    g.r(via).json(&["vdisk", "show", DISK])
}

fn router_index(name: &str) -> usize {
    name.trim_start_matches('r').parse::<usize>().unwrap() - 1
}

/// Waits until the vDisk's mirror is in sync (seen through `via`); its
/// owner and holder.
fn wait_in_sync(g: &Grid, via: usize, limit: Duration) -> (String, String) {
    let t0 = Instant::now();
    loop {
        let d = show(g, via);
        if d["dtl"]["state"] == "in_sync" {
            return (
                d["owner"].as_str().unwrap().to_string(),
                d["dtl"]["holder"].as_str().unwrap().to_string(),
            );
        }
        assert!(
            t0.elapsed() < limit,
            "the mirror did not get in sync within {limit:?}: {d}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The pattern byte of the write at `off` (never 0, so it differs from
/// unwritten space).
fn pattern_of(off: u64) -> u8 {
    u8::try_from((off / CHUNK) % 251).unwrap() + 1
}

/// Writes `n` chunks from byte `first` through `url`, each with
/// SYNCHRONIZE CACHE (directsync), until one fails; the offsets whose
/// write was acknowledged.
fn write_until_failure(url: &str, first: u64, n: u64) -> Vec<u64> {
    let mut c = Command::new(peer("qemu-io"));
    c.args(["-f", "raw", "-t", "directsync"]);
    for i in 0..n {
        let off = first + i * CHUNK;
        c.arg("-c")
            .arg(format!("write -P {} {off} {CHUNK}", pattern_of(off)));
    }
    c.arg(url);
    let out = run_timeout(&mut c, Duration::from_secs(120));
    let text = String::from_utf8_lossy(&out.stdout);
    // qemu-io stops at the first failed command; every "wrote" line before
    // it is an acknowledged write.
    text.lines()
        .filter_map(|l| {
            l.strip_prefix(&format!("wrote {CHUNK}/{CHUNK} bytes at offset "))
                .and_then(|o| o.trim().parse::<u64>().ok())
        })
        .collect()
}

/// Reads every acknowledged write back through `url` (a qemu-io run per
/// 3,000 writes).
fn verify_all(url: &str, acked: &BTreeMap<u64, u8>, what: &str) {
    let all: Vec<(&u64, &u8)> = acked.iter().collect();
    for part in all.chunks(3000) {
        verify_some(url, part, what);
    }
}

fn verify_some(url: &str, acked: &[(&u64, &u8)], what: &str) {
    let cmds: Vec<String> = acked
        .iter()
        .map(|(off, p)| format!("read -P {p} {off} {CHUNK}"))
        .collect();
    let text = qemu_io(url, &cmds);
    assert!(
        !text.contains("Pattern verification failed"),
        "{what}: an acknowledged write is lost:\n{}",
        text.lines()
            .filter(|l| l.contains("failed") || l.contains("offset"))
            .take(10)
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(
        text.matches("read ").count(),
        acked.len(),
        "{what}: not every read completed:\n{text}"
    );
}

/// Reads 4 KiB through `url` until it succeeds; when it did.
fn first_io(url: &str, limit: Duration) -> Instant {
    let t0 = Instant::now();
    loop {
        let out = run_timeout(
            Command::new(peer("qemu-io"))
                .args(["-f", "raw", "-c", "read 0 4k"])
                .arg(url),
            Duration::from_secs(30),
        );
        let text = String::from_utf8_lossy(&out.stdout);
        if out.status.success() && text.contains("read 4096/4096") {
            return Instant::now();
        }
        assert!(t0.elapsed() < limit, "no I/O completed within {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn setup(g: &Grid) {
    g.r(0).cli_ok(&["vm", "create", VM]);
    g.r(0).cli_ok(&[
        "vdisk", "create", DISK, "--vm", VM, "--size", "4G", "--vpool", "s3p",
    ]);
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[test]
fn owner_killed_under_verified_writes_loses_nothing() {
    let rounds: u64 = std::env::var("DEPOT_FAILOVER_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(10);
    let mut g = Grid::start(3, 3);
    setup(&g);
    let mut acked: BTreeMap<u64, u8> = BTreeMap::new();
    let mut next = 0u64;
    let mut times = Vec::new();
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    for round in 0..rounds {
        let (owner, holder) = wait_in_sync(&g, 0, Duration::from_secs(60));
        let o = router_index(&owner);
        // Log in at the router that is neither owner nor holder: it
        // redirects to the owner, and stays up.
        let via = (0..3)
            .find(|&i| i != o && i != router_index(&holder))
            .unwrap();
        let url = g.r(via).url(VM, 0);
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let delay = Duration::from_millis(300 + rng % 1700);
        let first = next;
        next += PER_ROUND * CHUNK;
        let (wrote, took) = std::thread::scope(|s| {
            let w = s.spawn(|| write_until_failure(&url, first, PER_ROUND));
            std::thread::sleep(delay);
            let t = Instant::now();
            g.routers[o].kill9();
            // From the kill to the first I/O completed by a new session.
            let probe = s.spawn(|| first_io(&url, Duration::from_secs(60)));
            let t_io = probe.join().unwrap();
            (w.join().unwrap(), t_io - t)
        });
        for off in &wrote {
            acked.insert(*off, pattern_of(*off));
        }
        times.push(took);
        let d = show(&g, via);
        assert_eq!(d["owner"], holder.as_str(), "round {round}: {d}");
        // This round's writes, and every earlier one at the end.
        let this: BTreeMap<u64, u8> = acked.range(first..).map(|(k, v)| (*k, *v)).collect();
        verify_all(&url, &this, &format!("round {round}"));
        eprintln!(
            "round {round}: killed {owner} after {delay:?} ({} writes acknowledged), {holder} took over; first I/O after {took:?}",
            wrote.len()
        );
        g.routers[o].respawn();
    }
    let via = (0..3)
        .find(|&i| g.r(i).cli(&["router", "list"]).status.success())
        .unwrap();
    verify_all(&g.r(via).url(VM, 0), &acked, "at the end");
    let max = *times.iter().max().unwrap();
    let med = median(&mut times);
    eprintln!(
        "failover over {rounds} rounds (lease 3 s): median {med:?}, max {max:?}; {} acknowledged writes, 0 lost",
        acked.len()
    );
}

#[test]
fn the_mirror_holder_dies_and_the_mirror_is_placed_again() {
    let mut g = Grid::start(3, 3);
    setup(&g);
    let (owner, holder) = wait_in_sync(&g, 0, Duration::from_secs(60));
    let (o, h) = (router_index(&owner), router_index(&holder));
    let third = (0..3).find(|&i| i != o && i != h).unwrap();
    let url = g.r(third).url(VM, 0);
    let mut acked: BTreeMap<u64, u8> = BTreeMap::new();
    // The holder dies mid-write: the owner goes on without it (every write
    // succeeds), then mirrors to the third router.
    let wrote = std::thread::scope(|s| {
        let w = s.spawn(|| write_until_failure(&url, 0, PER_ROUND));
        std::thread::sleep(Duration::from_millis(700));
        g.routers[h].kill9();
        w.join().unwrap()
    });
    assert_eq!(
        wrote.len() as u64,
        PER_ROUND,
        "writes failed when the holder died"
    );
    for off in wrote {
        acked.insert(off, pattern_of(off));
    }
    let (owner2, holder2) = wait_in_sync(&g, o, Duration::from_secs(60));
    assert_eq!(owner2, owner);
    assert_eq!(
        router_index(&holder2),
        third,
        "re-placed on the third router"
    );
    let d = show(&g, o);
    assert!(
        d["dtl"]["bytes_sent"].as_u64().unwrap() > PER_ROUND * CHUNK,
        "{d}"
    );
    // Now the owner dies: the new holder takes over with every write.
    for off in write_until_failure(&url, PER_ROUND * CHUNK, 100) {
        acked.insert(off, pattern_of(off));
    }
    g.routers[o].kill9();
    eventually(Duration::from_secs(30), "the new holder takes over", || {
        g.r(third).json(&["vdisk", "show", DISK])["owner"] == holder2.as_str()
    });
    verify_all(&g.r(third).url(VM, 0), &acked, "after the second failure");
}

#[test]
fn owner_and_holder_dying_together_wait_for_the_owner_or_an_admin() {
    let mut g = Grid::start(3, 3);
    setup(&g);
    let (owner, holder) = wait_in_sync(&g, 0, Duration::from_secs(60));
    let (o, h) = (router_index(&owner), router_index(&holder));
    let third = (0..3).find(|&i| i != o && i != h).unwrap();
    let url = g.r(third).url(VM, 0);
    let mut acked: BTreeMap<u64, u8> = BTreeMap::new();
    for off in write_until_failure(&url, 0, 100) {
        acked.insert(off, pattern_of(off));
    }
    g.routers[h].kill9();
    g.routers[o].kill9();
    eventually(Duration::from_secs(30), "both seen down", || {
        let rs = g.r(third).json(&["router", "list"]);
        rs.as_array()
            .unwrap()
            .iter()
            .filter(|r| r["state"] == "down")
            .count()
            == 2
    });
    // Nobody takes it over by itself ...
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(show(&g, third)["owner"], owner.as_str());
    // ... and the admin is told what recovering from the backend would
    // lose before anything happens.
    let out = g.r(third).cli(&["vdisk", "recover", DISK]);
    assert!(!out.status.success());
    let msg = String::from_utf8_lossy(&out.stderr);
    assert!(
        msg.contains("Recovery point") && msg.contains("--accept-loss"),
        "{msg}"
    );
    assert_eq!(show(&g, third)["owner"], owner.as_str());
    // The owner comes back: its flash has every acknowledged write.
    g.routers[o].respawn();
    eventually(Duration::from_secs(30), "the owner serves again", || {
        first_io(&url, Duration::from_secs(30));
        true
    });
    verify_all(&url, &acked, "after the owner came back");
    // Recovering a vDisk whose owner is up is refused.
    let out = g.r(third).cli(&["vdisk", "recover", DISK, "--accept-loss"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is up"));
    g.routers[h].respawn();
}

#[test]
fn a_paused_owner_is_replaced_by_its_mirror_and_acknowledges_nothing_after() {
    let g = Grid::start(3, 3);
    g.r(0).cli_ok(&["vm", "create", VM, "--multipath"]);
    g.r(0).cli_ok(&[
        "vdisk", "create", DISK, "--vm", VM, "--size", "256M", "--vpool", "s3p",
    ]);
    let (owner, holder) = wait_in_sync(&g, 0, Duration::from_secs(60));
    let (o, h) = (router_index(&owner), router_index(&holder));
    let owner_url = g.r(o).url(VM, 0);
    qemu_io_with(&owner_url, &["-t", "directsync"], &["write -P 0xa1 0 1M"]);
    g.routers[o].signal("STOP");
    eventually(Duration::from_secs(30), "the holder takes over", || {
        show(&g, h)["owner"] == holder.as_str()
    });
    let holder_url = g.r(h).url(VM, 0);
    qemu_io_with(
        &holder_url,
        &["-t", "directsync"],
        &["read -P 0xa1 0 1M", "write -P 0xb2 1M 1M"],
    );
    // The old owner wakes: its fence has passed, so it acknowledges
    // nothing, and it goes standby.
    g.routers[o].signal("CONT");
    let out = run_timeout(
        Command::new(peer("qemu-io"))
            .args(["-f", "raw", "-t", "directsync", "-c", "write -P 0xee 1M 4K"])
            .arg(&owner_url),
        Duration::from_secs(60),
    );
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() || text.contains("failed"),
        "a write through the deposed owner was acknowledged: {text}"
    );
    eventually(
        Duration::from_secs(30),
        "the old owner goes standby",
        || g.r(o).log().contains("another router took this vDisk over"),
    );
    qemu_io(&holder_url, &["read -P 0xa1 0 1M", "read -P 0xb2 1M 1M"]);
}

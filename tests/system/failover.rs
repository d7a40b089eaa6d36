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
//! the CI run; `scripts/failover-soak.sh` runs 100), `DEPOT_FAILOVER_LEASE`
//! the routers' lease in seconds (default 3, to keep CI short; the
//! daemon's default is 5).

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::cluster::{Grid, assert_write_refused, eventually};
use crate::common::*;
use crate::hostile::Raw;

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
    let env = |k: &str, default: u64| -> u64 {
        std::env::var(k)
            .ok()
            .and_then(|r| r.parse().ok())
            .unwrap_or(default)
    };
    let rounds = env("DEPOT_FAILOVER_ROUNDS", 10);
    let lease = env("DEPOT_FAILOVER_LEASE", 3);
    let mut g = Grid::start(3, lease);
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
        "failover over {rounds} rounds (lease {lease} s): median {med:?}, max {max:?}; {} acknowledged writes, 0 lost",
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
    assert_write_refused(&owner_url, &["-t", "directsync"], "1M");
    eventually(
        Duration::from_secs(30),
        "the old owner goes standby",
        || g.r(o).log().contains("another router took this vDisk over"),
    );
    qemu_io(&holder_url, &["read -P 0xa1 0 1M", "read -P 0xb2 1M 1M"]);
}

#[test]
fn a_stalled_holder_costs_one_call_timeout_then_the_mirror_moves() {
    let g = Grid::start(3, 3);
    setup(&g);
    let (owner, holder) = wait_in_sync(&g, 0, Duration::from_secs(60));
    let (o, h) = (router_index(&owner), router_index(&holder));
    let third = (0..3).find(|&i| i != o && i != h).unwrap();
    let url = g.r(third).url(VM, 0);
    // The holder stops answering (its network stalls): the owner's next
    // sync waits at most the call timeout, records "degraded", and goes on.
    g.routers[h].signal("STOP");
    let t0 = Instant::now();
    let wrote = write_until_failure(&url, 0, 200);
    let took = t0.elapsed();
    assert_eq!(wrote.len(), 200, "writes failed while the holder stalled");
    let (owner2, holder2) = wait_in_sync(&g, o, Duration::from_secs(60));
    assert_eq!(owner2, owner);
    assert_eq!(
        router_index(&holder2),
        third,
        "the mirror moved to the third router"
    );
    let d = show(&g, o);
    assert!(d["dtl"]["bytes_sent"].as_u64().unwrap() > 0, "{d}");
    eprintln!("200 writes with a stalled holder took {took:?}");
    // The stalled router wakes up: it rejoins and drops its stale copy.
    g.routers[h].signal("CONT");
    eventually(Duration::from_secs(30), "the stale copy is dropped", || {
        g.r(h).log().contains("mirror copy dropped")
    });
    let acked: BTreeMap<u64, u8> = wrote.iter().map(|o| (*o, pattern_of(*o))).collect();
    verify_all(&url, &acked, "after the stall");
}

/// PERSISTENT RESERVE OUT with a 24-byte parameter list: service action
/// `sa`, type `ty`, reservation key `key`, service action key `sa_key`.
fn pr_out(r: &mut Raw, sa: u8, ty: u8, key: u64, sa_key: u64) -> (u8, u8, u8, u8) {
    let cdb = [0x5f, sa, ty, 0, 0, 0, 0, 0, 24, 0];
    let mut p = [0u8; 24];
    p[..8].copy_from_slice(&key.to_be_bytes());
    p[8..16].copy_from_slice(&sa_key.to_be_bytes());
    r.scsi_out(0, &cdb, &p)
}

/// Logs initiator `name` in at router `i`'s portal and consumes the unit
/// attentions a new nexus gets (TEST UNIT READY until it reports none; a
/// standby port answers NOT READY).
fn nexus(g: &Grid, i: usize, name: &str) -> Raw {
    let (mut r, rx) = Raw::login(
        g.r(i).portal,
        name,
        Some(&format!("iqn.2026-11.io.depot:{VM}")),
    );
    assert_eq!(rx.status(), (0, 0), "login of {name} at r{}", i + 1);
    for _ in 0..8 {
        let (status, key, ..) = r.scsi(0, &[0; 6], 0);
        if status == 0 || key != 6 {
            break;
        }
    }
    r
}

#[test]
fn a_reservation_made_through_the_dead_owner_holds_on_the_new_one() {
    let mut g = Grid::start(3, 3);
    g.r(0).cli_ok(&["vm", "create", VM, "--multipath"]);
    g.r(0).cli_ok(&[
        "vdisk", "create", DISK, "--vm", VM, "--size", "64M", "--vpool", "s3p",
    ]);
    let (owner, holder) = wait_in_sync(&g, 0, Duration::from_secs(60));
    let (o, h) = (router_index(&owner), router_index(&holder));
    // Initiator A registers and reserves (Write Exclusive) through the
    // owner's port.
    let mut a = nexus(&g, o, "iqn.2026-11.test:a");
    assert_eq!(pr_out(&mut a, 0x00, 0, 0, 0xa1).0, 0, "REGISTER");
    assert_eq!(pr_out(&mut a, 0x01, 0x01, 0xa1, 0).0, 0, "RESERVE");
    // Another initiator may read but not write.
    let write10 = [0x2a, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    let read10 = [0x28, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    let mut b = nexus(&g, o, "iqn.2026-11.test:b");
    assert_eq!(
        b.scsi(0, &write10, 0).0,
        0x18,
        "conflict before the failover"
    );
    drop(b);
    // Initiator C is logged in at the holder's port, a standby path.
    let tur = [0u8; 6];
    let mut c = nexus(&g, h, "iqn.2026-11.test:c");
    assert_eq!(c.scsi(0, &tur, 0), (0x02, 2, 0x04, 0x0b), "standby");
    g.routers[o].kill9();
    eventually(Duration::from_secs(30), "the holder takes over", || {
        show(&g, h)["owner"] == holder.as_str()
    });
    // C's path turned active: its next command reports ASYMMETRIC ACCESS
    // STATE CHANGED (once per change it missed), then it is served, under
    // A's reservation.
    let mut seen = Vec::new();
    let answer = loop {
        let a = c.scsi(0, &tur, 0);
        if a.1 != 6 || seen.len() == 4 {
            break a;
        }
        seen.push(a);
    };
    assert!(!seen.is_empty(), "no unit attention after the takeover");
    assert!(
        seen.iter().all(|a| *a == (0x02, 6, 0x2a, 0x06)),
        "{seen:x?}"
    );
    assert_eq!(
        answer.0, 0,
        "TEST UNIT READY after the takeover: {answer:x?}"
    );
    assert_eq!(
        c.scsi(0, &write10, 0).0,
        0x18,
        "C conflicts with A's reservation"
    );
    // On the new owner the reservation still holds: B conflicts on writes,
    // reads pass; B cannot reserve; A's key still preempts.
    let mut b = nexus(&g, h, "iqn.2026-11.test:b");
    assert_eq!(b.scsi(0, &read10, 0).0, 0, "READ under Write Exclusive");
    assert_eq!(b.scsi(0, &write10, 0).0, 0x18, "WRITE after the failover");
    assert_eq!(pr_out(&mut b, 0x00, 0, 0, 0xb2).0, 0, "B registers");
    assert_eq!(
        pr_out(&mut b, 0x01, 0x01, 0xb2, 0).0,
        0x18,
        "B cannot reserve what A holds"
    );
    // B preempts A's registration (PREEMPT, SA key A's): now B holds it.
    assert_eq!(pr_out(&mut b, 0x04, 0x01, 0xb2, 0xa1).0, 0, "PREEMPT");
    assert_eq!(b.scsi(0, &write10, 0).0, 0, "the new holder writes");
}

#[test]
fn a_dead_routers_vdisks_are_spread_over_the_survivors_and_mirrored_again() {
    let mut g = Grid::start(3, 3);
    // Four VMs of one vDisk each, all created (so owned) on r1.
    let vms = ["app1", "app2", "app3", "app4"];
    let disk = |vm: &str| format!("{vm}-root");
    for vm in vms {
        g.r(0).cli_ok(&["vm", "create", vm]);
        g.r(0).cli_ok(&[
            "vdisk",
            "create",
            &disk(vm),
            "--vm",
            vm,
            "--size",
            "64M",
            "--vpool",
            "s3p",
        ]);
    }
    let show = |g: &Grid, via: usize, vm: &str| g.r(via).json(&["vdisk", "show", &disk(vm)]);
    let mut holders = BTreeMap::new();
    for (i, vm) in vms.iter().enumerate() {
        eventually(Duration::from_secs(60), "the mirror in sync", || {
            show(&g, 0, vm)["dtl"]["state"] == "in_sync"
        });
        let d = show(&g, 0, vm);
        assert_eq!(d["owner"], "r1", "{d}");
        holders.insert(*vm, d["dtl"]["holder"].as_str().unwrap().to_string());
        // A flushed write each, to read back on the new owner.
        let p = 0x41 + i;
        qemu_io(
            &g.r(0).url(vm, 0),
            &[format!("write -P {p} 0 1M").as_str(), "flush"],
        );
    }
    // The mirrors are spread: each other router holds two.
    let per = |m: &BTreeMap<&str, String>, r: &str| m.values().filter(|h| *h == r).count();
    assert_eq!(
        (per(&holders, "r2"), per(&holders, "r3")),
        (2, 2),
        "{holders:?}"
    );
    g.routers[0].kill9();
    // Each vDisk is taken over by the router that held its mirror: two on
    // each survivor, not four on one.
    let mut owners = BTreeMap::new();
    for vm in vms {
        eventually(Duration::from_secs(30), "a takeover", || {
            show(&g, 1, vm)["owner"] == holders[vm].as_str()
        });
        owners.insert(vm, holders[vm].clone());
    }
    assert_eq!((per(&owners, "r2"), per(&owners, "r3")), (2, 2));
    // Each new owner mirrors its vDisks again, on the other survivor.
    for (i, vm) in vms.iter().enumerate() {
        eventually(Duration::from_secs(60), "mirrored again", || {
            let d = show(&g, 1, vm);
            d["dtl"]["state"] == "in_sync"
                && d["dtl"]["holder"] != d["owner"]
                && d["dtl"]["holder"] != "r1"
        });
        let p = 0x41 + i;
        let text = qemu_io(&g.r(1).url(vm, 0), &[&format!("read -P {p} 0 1M")]);
        assert!(!text.contains("verification failed"), "{vm}: {text}");
    }
}

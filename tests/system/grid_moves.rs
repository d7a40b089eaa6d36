//! Live moves and fencing of the grid, with real initiators: fio's libiscsi
//! engine (a single-path initiator that follows login redirects) verifying
//! every block it wrote while its vDisk moves between routers, and a
//! paused (SIGSTOP) owner whose vDisk is taken over and who must neither
//! acknowledge I/O nor change the backend when it comes back.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::cluster::{Grid, assert_write_refused, eventually};
use crate::common::*;

fn fio_verify(url: &str, job: &[&str], limit: Duration) -> std::process::Output {
    let escaped = url.replace(':', "\\:");
    run_timeout(
        Command::new(peer("fio"))
            .arg("--name=verify")
            .arg("--ioengine=libiscsi")
            .arg(format!("--filename={escaped}"))
            .args(job)
            .args([
                "--verify=crc32c",
                "--do_verify=1",
                "--verify_fatal=1",
                "--verify_state_save=0",
                "--group_reporting",
            ]),
        limit,
    )
}

/// The JSON of `depot vdisk move NAME --to TO` run through router `via`.
fn move_to(g: &Grid, via: usize, vdisk: &str, to: &str) -> serde_json::Value {
    g.r(via).json(&["vdisk", "move", vdisk, "--to", to])
}

#[test]
fn moves_under_verified_io_lose_nothing() {
    let g = Grid::start(3, 5);
    g.r(0).cli_ok(&["vm", "create", "web1"]);
    g.r(0).cli_ok(&[
        "vdisk",
        "create",
        "web1-root",
        "--vm",
        "web1",
        "--size",
        "256M",
        "--vpool",
        "s3p",
    ]);
    // fio logs in at r2 (redirected to the owner), writes and verifies at
    // QD16 while the vDisk goes r1 -> r2 -> r3 -> r1.
    let url = g.r(1).url("web1", 0);
    std::thread::scope(|s| {
        let fio = s.spawn(|| {
            fio_verify(
                &url,
                &[
                    "--rw=randwrite",
                    "--bs=4k",
                    "--iodepth=16",
                    "--size=96m",
                    "--time_based",
                    "--runtime=24",
                    "--verify_backlog=2048",
                ],
                Duration::from_secs(180),
            )
        });
        std::thread::sleep(Duration::from_secs(4));
        let mut pauses = Vec::new();
        for to in ["r2", "r3", "r1"] {
            let m = move_to(&g, 2, "web1-root", to);
            assert_eq!(m["to"], to, "{m}");
            pauses.push(m["pause_ms"].as_u64().unwrap());
            std::thread::sleep(Duration::from_secs(3));
        }
        eprintln!("move pauses under fio (ms): {pauses:?}");
        let out = fio.join().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "fio failed during moves:\n{text}");
        assert!(text.contains("err= 0"), "{text}");
        assert!(!text.contains("verify: bad"), "{text}");
    });
    // Everything fio wrote is still there after the last move, read through
    // yet another router.
    let d = g.r(1).json(&["vdisk", "show", "web1-root"]);
    assert_eq!(d["owner"], "r1", "{d}");
}

#[test]
fn a_paused_owner_is_fenced_and_cannot_damage_the_backend() {
    let g = Grid::start(3, 3);
    // Without a mirror nobody takes the vDisk over by itself: this is the
    // admin's takeover from the backend (tests/system/failover.rs has the
    // mirrored one).
    g.r(0)
        .cli_ok(&["vm", "create", "db1", "--multipath", "--dtl", "none"]);
    g.r(0).cli_ok(&[
        "vdisk", "create", "db1-root", "--vm", "db1", "--size", "64M", "--vpool", "s3p",
    ]);
    let before = g.r(0).json(&["vdisk", "show", "db1-root"]);
    assert_eq!(before["owner"], "r1");
    let g1 = before["generation"].as_u64().unwrap();
    // r1 acknowledges writes (some shipped, some only on its flash).
    let r1_url = g.r(0).url("db1", 0);
    qemu_io(&r1_url, &["write -P 0xa1 0 4M", "write -P 0xa2 8M 4M"]);
    // r1 freezes; its lease lapses.
    g.routers[0].signal("STOP");
    let t0 = Instant::now();
    eventually(Duration::from_secs(15), "r1 seen down", || {
        let rs = g.r(1).json(&["router", "list"]);
        rs.as_array()
            .unwrap()
            .iter()
            .any(|r| r["name"] == "r1" && r["state"] == "down")
    });
    let down_after = t0.elapsed();
    // A move without --force is refused with the reason.
    let out = g.r(1).cli(&["vdisk", "move", "db1-root", "--to", "r2"]);
    assert!(!out.status.success());
    let msg = String::from_utf8_lossy(&out.stderr);
    assert!(msg.contains("is down") && msg.contains("--force"), "{msg}");
    // r2 takes the vDisk over from the backend; generations only grow.
    let m = g
        .r(1)
        .json(&["vdisk", "move", "db1-root", "--to", "r2", "--force"]);
    let g2 = m["generation"].as_u64().unwrap();
    assert!(g2 > g1, "{m}");
    let r2_url = g.r(1).url("db1", 0);
    qemu_io(&r2_url, &["write -P 0xb2 8M 4M", "read -P 0xb2 8M 4M"]);
    // r1 comes back: its lease is gone, so it acknowledges nothing ...
    g.routers[0].signal("CONT");
    assert_write_refused(&r1_url, &[], "8M");
    // ... it rejoins, sees r2 as the owner and goes standby ...
    eventually(
        Duration::from_secs(30),
        "r1 rejoins and goes standby",
        || g.r(0).log().contains("another router took this vDisk over"),
    );
    // ... and its late backend writes (its shipper woke with unshipped
    // data) changed nothing: the data is the new owner's, also after the
    // vDisk moves to a router that rebuilds it from the backend.
    std::thread::sleep(Duration::from_secs(2));
    qemu_io(&r2_url, &["read -P 0xb2 8M 4M"]);
    let m = move_to(&g, 2, "db1-root", "r3");
    assert_eq!(m["to"], "r3", "{m}");
    qemu_io(&g.r(2).url("db1", 0), &["read -P 0xb2 8M 4M"]);
    eprintln!(
        "owner seen down after {down_after:?}; generations {g1} -> {g2} -> {}",
        m["generation"]
    );
}

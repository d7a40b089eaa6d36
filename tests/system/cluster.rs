//! The grid: three routers on loopback sharing one cluster state in a real
//! 3-member etcd and an S3 vPool on a real S3 server (moto), driven by the
//! CLI and by real initiators.

use std::process::Command;
use std::time::{Duration, Instant};

use depot_testkit::{EtcdCluster, Moto};

use crate::common::*;

/// Three routers of one cluster, an S3 vPool `s3p` on moto.
pub struct Grid {
    /// The routers r1, r2, r3.
    pub routers: Vec<Depot>,
    /// The etcd cluster.
    pub etcd: EtcdCluster,
    /// The S3 server.
    pub moto: Moto,
}

impl Grid {
    /// Starts etcd, moto and `n` routers with a lease of `ttl` seconds,
    /// and creates the S3 vPool through r1.
    pub fn start(n: usize, ttl: u64) -> Grid {
        let etcd = EtcdCluster::start(3);
        let moto = Moto::start();
        moto.bucket("depot");
        let routers: Vec<Depot> = (1..=n)
            .map(|i| Depot::start(&router_config(&format!("r{i}"), &etcd.endpoints_arg(), ttl)))
            .collect();
        let g = Grid {
            routers,
            etcd,
            moto,
        };
        g.r(0).cli_ok(&[
            "vpool",
            "create",
            "s3p",
            "--s3-endpoint",
            &g.moto.endpoint(),
            "--s3-bucket",
            "depot",
            "--s3-allow-http",
            "--s3-access-key",
            "test",
            "--s3-secret-key",
            "test",
        ]);
        g
    }

    /// Router `i` (0-based).
    pub fn r(&self, i: usize) -> &Depot {
        &self.routers[i]
    }
}

/// Waits until `f` holds, or panics after `limit` with `what`.
pub fn eventually(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(
            t0.elapsed() < limit,
            "{what} did not happen within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn md5_of(path: &std::path::Path) -> String {
    use md5::Digest;
    let data = std::fs::read(path).unwrap();
    format!("{:x}", md5::Md5::digest(&data))
}

#[test]
fn one_state_every_router_serves_and_redirects() {
    let g = Grid::start(3, 5);
    let routers = g.r(1).json(&["router", "list"]);
    let rows = routers.as_array().unwrap();
    assert_eq!(rows.len(), 3);
    assert!(rows.iter().all(|r| r["state"] == "up"), "{routers}");

    // A VM created through r2 with a vDisk created through r3 ...
    g.r(1).cli_ok(&["vm", "create", "web1"]);
    let t0 = Instant::now();
    g.r(2).cli_ok(&[
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
    // ... is served by r1's portal within a second (SendTargets lists it
    // with every router's portal).
    eventually(Duration::from_secs(1), "r1 lists the new target", || {
        let out = Command::new(peer("iscsi-ls"))
            .arg(format!("iscsi://{}", g.r(0).portal))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        text.matches("iqn.2026-11.io.depot:web1").count() == 3
    });
    let served_after = t0.elapsed();
    assert!(served_after < Duration::from_secs(2), "{served_after:?}");
    let d = g.r(0).json(&["vdisk", "show", "web1-root"]);
    assert_eq!(d["owner"], "r3", "{d}");
    assert!(d["generation"].as_u64().unwrap() > 0);

    // QEMU (libiscsi, no multipath) at a non-owner is redirected: a 256 MiB
    // image round-trips byte-identical through r1 and back through r2.
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.img");
    std::fs::write(&src, pattern(256 << 20, 42)).unwrap();
    let out = run_timeout(
        Command::new(peer("qemu-img"))
            .args(["convert", "-n", "-f", "raw", "-O", "raw"])
            .arg(&src)
            .arg(g.r(0).url("web1", 0)),
        Duration::from_secs(300),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let back = dir.path().join("back.img");
    let out = run_timeout(
        Command::new(peer("qemu-img"))
            .args(["convert", "-f", "raw", "-O", "raw"])
            .arg(g.r(1).url("web1", 0))
            .arg(&back),
        Duration::from_secs(300),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(md5_of(&src), md5_of(&back));

    // Snapshots through any router run on the owner.
    g.r(0).cli_ok(&["snapshot", "create", "web1-root", "s1"]);
    let snaps = g.r(1).json(&["snapshot", "list", "web1-root"]);
    assert_eq!(snaps[0]["name"], "s1", "{snaps}");
}

#[test]
fn concurrent_conflicting_changes_get_409_and_no_update_is_lost() {
    let g = Grid::start(2, 5);
    for round in 0..5 {
        let name = format!("race{round}");
        let (a, b) = std::thread::scope(|s| {
            let a = s.spawn(|| g.r(0).cli(&["vm", "create", &name]));
            let b = s.spawn(|| g.r(1).cli(&["vm", "create", &name]));
            (a.join().unwrap(), b.join().unwrap())
        });
        let ok = [a.status.success(), b.status.success()];
        assert_eq!(
            ok.iter().filter(|x| **x).count(),
            1,
            "exactly one create wins"
        );
        let loser = if ok[0] { &b } else { &a };
        let msg = String::from_utf8_lossy(&loser.stderr);
        assert!(
            msg.contains("already exists") || msg.contains("at the same time"),
            "{msg}"
        );
    }
    // Different objects created at once on different routers all land.
    std::thread::scope(|s| {
        for i in 0..6 {
            let g = &g;
            s.spawn(move || g.r(i % 2).cli_ok(&["vm", "create", &format!("many{i}")]));
        }
    });
    let vms = g.r(0).json(&["vm", "list"]);
    let names: Vec<&str> = vms
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    for i in 0..6 {
        assert!(names.contains(&format!("many{i}").as_str()), "{names:?}");
    }
}

#[test]
fn a_second_router_with_the_same_name_is_refused() {
    let g = Grid::start(1, 5);
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("depot.toml");
    std::fs::write(&cfg, router_config("r1", &g.etcd.endpoints_arg(), 5)).unwrap();
    let out = run_timeout(
        Command::new(env!("CARGO_BIN_EXE_depot"))
            .arg("serve")
            .arg("--config")
            .arg(&cfg)
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg("--iscsi-listen")
            .arg(format!("127.0.0.1:{}", free_port()))
            .arg("--api-listen")
            .arg(format!("127.0.0.1:{}", free_port())),
        Duration::from_secs(60),
    );
    assert!(!out.status.success());
    let msg = String::from_utf8_lossy(&out.stderr);
    assert!(msg.contains("already running"), "{msg}");
}

#[test]
fn etcd_unreachable_at_start_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("depot.toml");
    let dead = format!("http://127.0.0.1:{}", free_port());
    std::fs::write(&cfg, router_config("r1", &dead, 5)).unwrap();
    let out = run_timeout(
        Command::new(env!("CARGO_BIN_EXE_depot"))
            .arg("serve")
            .arg("--config")
            .arg(&cfg)
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg("--iscsi-listen")
            .arg(format!("127.0.0.1:{}", free_port()))
            .arg("--api-listen")
            .arg(format!("127.0.0.1:{}", free_port())),
        Duration::from_secs(60),
    );
    assert!(!out.status.success());
    let msg = String::from_utf8_lossy(&out.stderr);
    assert!(msg.contains("etcd") && msg.contains(&dead), "{msg}");
}

#[test]
fn losing_etcd_stops_changes_not_io() {
    let mut g = Grid::start(2, 3);
    g.r(0).cli_ok(&["vm", "create", "db1"]);
    g.r(0).cli_ok(&[
        "vdisk", "create", "db1-root", "--vm", "db1", "--size", "64M", "--vpool", "s3p",
    ]);
    let url = g.r(0).url("db1", 0);
    qemu_io(&url, &["write -P 0x11 0 1M"]);
    g.etcd.kill_all();
    // Management changes fail with a clear error ...
    let out = g.r(0).cli(&["vm", "create", "db2"]);
    assert!(!out.status.success());
    let msg = String::from_utf8_lossy(&out.stderr);
    assert!(msg.contains("etcd"), "{msg}");
    // ... while I/O goes on, well past the 3 s lease.
    for i in 0..4u8 {
        qemu_io(
            &url,
            &[
                format!("write -P 0x{:02x} 1M 1M", 0x20 + i),
                format!("read -P 0x{:02x} 1M 1M", 0x20 + i),
            ],
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    qemu_io(&url, &["read -P 0x11 0 1M"]);
    g.etcd.restart_all();
    eventually(Duration::from_secs(30), "management works again", || {
        g.r(1).cli(&["vm", "create", "db2"]).status.success()
    });
    qemu_io(&url, &["read -P 0x23 1M 1M"]);
}

#[test]
fn metrics_show_routers_owners_and_generations() {
    let mut g = Grid::start(2, 3);
    g.r(0).cli_ok(&["vm", "create", "obs1"]);
    g.r(1).cli_ok(&[
        "vdisk",
        "create",
        "obs1-root",
        "--vm",
        "obs1",
        "--size",
        "64M",
        "--vpool",
        "s3p",
    ]);
    let d = g.r(0).json(&["vdisk", "show", "obs1-root"]);
    let generation = d["generation"].as_u64().unwrap();
    let table = g.r(0).cli_ok(&["vdisk", "list"]);
    assert!(
        table.lines().next().unwrap().ends_with("OWNER  GEN"),
        "{table}"
    );
    let metrics = |r: &Depot| {
        let (st, text) = r.http_get("/metrics");
        assert_eq!(st, 200, "{text}");
        text
    };
    for (i, me) in ["r1", "r2"].into_iter().enumerate() {
        let text = metrics(g.r(i));
        for line in [
            "depot_vdisk_owner_info{owner=\"r2\",vdisk=\"obs1-root\",vm=\"obs1\"} 1".into(),
            format!("depot_vdisk_generation{{vdisk=\"obs1-root\",vm=\"obs1\"}} {generation}"),
            "depot_cluster_router_up{router=\"r1\"} 1".into(),
            "depot_cluster_router_up{router=\"r2\"} 1".into(),
            format!("depot_router_lease_state{{router=\"{me}\",state=\"live\"}} 1"),
            format!("depot_router_vdisks_owned{{router=\"{me}\"}} {i}"),
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{me}: no {line} in\n{text}"
            );
        }
        assert!(text.contains(&format!("depot_router_info{{router=\"{me}\",tpgt=")));
        // Every cluster-only metric the dashboards and rules use is here,
        // and the exposition passes promtool's linter.
        let have = crate::dashboards::exported(&text);
        for name in crate::dashboards::CLUSTER_ONLY {
            assert!(have.contains(*name), "{me}: {name} not exported");
        }
        crate::dashboards::promtool_check_metrics(&text);
        // Its log lines carry its name.
        let log = g.r(i).log();
        let lines: Vec<&str> = log.lines().filter(|l| l.contains("INFO")).collect();
        assert!(!lines.is_empty(), "{log}");
        let tag = format!(" router={me} ");
        assert!(lines.iter().all(|l| l.contains(&tag)), "{log}");
    }
    // r2 leaves: r1 shows it down at once (its lease is revoked).
    assert!(g.routers[1].stop());
    eventually(Duration::from_secs(10), "r1 shows r2 down", || {
        metrics(g.r(0))
            .lines()
            .any(|l| l == "depot_cluster_router_up{router=\"r2\"} 0")
    });
}

#[test]
fn an_s3_vpool_with_a_missing_bucket_is_refused_clearly() {
    let g = Grid::start(1, 5);
    let out = g.r(0).cli(&[
        "vpool",
        "create",
        "nob",
        "--s3-endpoint",
        &g.moto.endpoint(),
        "--s3-bucket",
        "no-such-bucket",
        "--s3-allow-http",
        "--s3-access-key",
        "test",
        "--s3-secret-key",
        "test",
    ]);
    assert!(!out.status.success());
    let msg = String::from_utf8_lossy(&out.stderr);
    assert!(
        msg.contains("no-such-bucket") && msg.contains("does not exist"),
        "{msg}"
    );
    // Nothing was recorded; the vPool that works shows how it fences.
    let pools = g.r(0).json(&["vpool", "list"]);
    let names: Vec<&str> = pools
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["s3p"]);
    assert_eq!(
        pools[0]["fencing"], "conditional",
        "moto honours conditional PUTs"
    );
}

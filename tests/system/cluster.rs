//! The grid: three routers on loopback sharing one cluster state in a real
//! 3-member etcd and an S3 vPool on a real S3 server, driven by the CLI and
//! by real initiators. The S3 server is moto (CI), or Garage with
//! `DEPOT_TEST_S3=garage` (`depot_testkit::S3Server`).

use std::process::Command;
use std::time::{Duration, Instant};

use depot_testkit::{EtcdCluster, S3Server};

use crate::common::*;

/// Three routers of one cluster, an S3 vPool `s3p` on the S3 server.
pub struct Grid {
    /// The routers r1, r2, r3.
    pub routers: Vec<Depot>,
    /// The etcd cluster.
    pub etcd: EtcdCluster,
    /// The S3 server.
    pub s3: S3Server,
}

impl Grid {
    /// Starts etcd, the S3 server and `n` routers with a lease of `ttl` seconds,
    /// and creates the S3 vPool through r1.
    pub fn start(n: usize, ttl: u64) -> Grid {
        let etcd = EtcdCluster::start(3);
        let s3 = S3Server::start();
        s3.bucket("depot");
        let routers: Vec<Depot> = (1..=n)
            .map(|i| Depot::start(&router_config(&format!("r{i}"), &etcd.endpoints_arg(), ttl)))
            .collect();
        let g = Grid { routers, etcd, s3 };
        g.r(0).cli_ok(&[
            "vpool",
            "create",
            "s3p",
            "--s3-endpoint",
            &g.s3.endpoint(),
            "--s3-bucket",
            "depot",
            "--s3-allow-http",
            "--s3-access-key",
            g.s3.access_key(),
            "--s3-secret-key",
            g.s3.secret_key(),
        ]);
        g
    }

    /// Router `i` (0-based).
    pub fn r(&self, i: usize) -> &Depot {
        &self.routers[i]
    }

    /// The portal group tag of each router, r1 first (`router list`).
    pub fn tpgts(&self) -> Vec<u16> {
        let list = self.r(0).json(&["router", "list"]);
        (1..=self.routers.len())
            .map(|i| {
                let name = format!("r{i}");
                list.as_array()
                    .unwrap()
                    .iter()
                    .find(|r| r["name"] == name.as_str())
                    .and_then(|r| r["tpgt"].as_u64())
                    .and_then(|t| u16::try_from(t).ok())
                    .unwrap_or_else(|| panic!("no tpgt for {name}: {list}"))
            })
            .collect()
    }
}

/// A write through a router that lost the vDisk (deposed, fenced) must not
/// be acknowledged: `qemu-io` writing 4 KiB at `off` with `opts` fails.
pub fn assert_write_refused(url: &str, opts: &[&str], off: &str) {
    let out = run_timeout(
        Command::new(peer("qemu-io"))
            .args(["-f", "raw"])
            .args(opts)
            .args(["-c", &format!("write -P 0xee {off} 4K")])
            .arg(url),
        Duration::from_secs(60),
    );
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() || text.contains("failed"),
        "a write through the deposed owner was acknowledged: {text}"
    );
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

/// The router-to-router address of `r` (its `peer_listen`).
fn peer_addr(r: &Depot) -> String {
    let cfg = std::fs::read_to_string(r.dir.path().join("depot.toml")).unwrap();
    let line = cfg
        .lines()
        .find_map(|l| l.strip_prefix("peer_listen = "))
        .unwrap_or_else(|| panic!("no peer_listen in {cfg}"));
    line.trim_matches('"').to_string()
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
        table.lines().next().unwrap().contains("OWNER  GEN  DTL"),
        "{table}"
    );
    let metrics = |r: &Depot| {
        let (st, text) = r.http_get("/metrics");
        assert_eq!(st, 200, "{text}");
        text
    };
    // Something on the network that is not a router of the cluster talks
    // to each router's peer port: refused, logged and counted.
    for i in 0..2 {
        let mut c = std::net::TcpStream::connect(peer_addr(g.r(i))).unwrap();
        use std::io::Write;
        c.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
        eventually(Duration::from_secs(10), "the refusal counted", || {
            metrics(g.r(i))
                .lines()
                .any(|l| l == "depot_peer_refused_total{reason=\"tls\"} 1")
        });
        assert!(g.r(i).log().contains("peer connection refused"));
    }
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
            // The owner (r2) reports its vDisk's mirror.
            if name.starts_with("depot_vdisk_dtl") && me != "r2" {
                continue;
            }
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
        &g.s3.endpoint(),
        "--s3-bucket",
        "no-such-bucket",
        "--s3-allow-http",
        "--s3-access-key",
        g.s3.access_key(),
        "--s3-secret-key",
        g.s3.secret_key(),
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
    // moto honours conditional PUTs; Garage ignores them (the vPool reads
    // the manifest first).
    let want = match g.s3 {
        S3Server::Moto(_) => "conditional",
        S3Server::Garage(_) => "external",
    };
    assert_eq!(pools[0]["fencing"], want);
}

// etcd's TLS and authentication are the cluster's admission control
// (docs/cluster.md, "Trust between routers"): a process without the CA, a
// client certificate or the etcd user's password can neither join nor
// read the cluster state (the cluster CA's key among it).
mod secured_etcd {
    use std::path::{Path, PathBuf};
    use std::process::{Command, Output, Stdio};
    use std::time::{Duration, Instant};

    use depot_testkit::EtcdCluster;

    use super::eventually;
    use crate::common::*;

    /// `[cluster]` settings (key, path or text) added to a configuration.
    type Settings<'a> = Vec<(&'a str, &'a Path)>;

    /// The password of the etcd user `depot` in the secured-etcd tests.
    const ETCD_PASSWORD: &str = "depot-etcd-secret";

    /// Router `name`'s configuration ([`router_config`]) on `endpoints` with
    /// the `[cluster]` settings `extra` (key, value) added as TOML strings.
    fn secured_config(name: &str, endpoints: &str, extra: &[(&str, &Path)]) -> String {
        let mut cfg = router_config(name, endpoints, 5);
        for (k, v) in extra {
            let v = v.to_str().expect("UTF-8 path");
            cfg.push_str(&format!("{k} = {v:?}\n"));
        }
        cfg
    }

    /// Writes `password` (with a trailing newline, as an editor would) to a
    /// password file in `dir`.
    fn password_file(dir: &Path, password: &str) -> PathBuf {
        let p = dir.join(format!("etcd-password-{}", free_port()));
        std::fs::write(&p, format!("{password}\n")).unwrap();
        p
    }

    /// Runs `depot serve` with `config` and requires it to exit with an
    /// error; returns its stderr and how long it took to give up.
    fn serve_refused(config: &str) -> (String, Duration) {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("depot.toml");
        std::fs::write(&cfg, config).unwrap();
        let t0 = Instant::now();
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
        let took = t0.elapsed();
        let msg = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "depot started with {config}: {msg}");
        (msg, took)
    }

    /// `etcdctl` on `etcd` with only the given global flags (no user unless
    /// given): what a process outside the cluster could try.
    fn outsider_etcdctl(etcd: &EtcdCluster, flags: &[&str], args: &[&str]) -> Output {
        Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg("--endpoints")
            .arg(etcd.endpoints_arg())
            .arg("--command-timeout=2s")
            .args(flags)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("etcdctl")
    }

    fn vm_names(d: &Depot) -> Vec<String> {
        d.json(&["vm", "list"])
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["name"].as_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn routers_join_an_etcd_that_requires_tls_a_client_cert_and_a_user() {
        let t0 = Instant::now();
        let mut etcd = EtcdCluster::start_tls(3, true);
        etcd.enable_auth("depot", ETCD_PASSWORD, "/depot");
        let set_up = t0.elapsed();
        let secrets = tempfile::tempdir().unwrap();
        let pw = password_file(secrets.path(), ETCD_PASSWORD);
        let tls = etcd.tls().unwrap().clone();
        let (cert, key) = tls.client.clone().unwrap();
        let creds: [(&str, &Path); 5] = [
            ("etcd_ca", &tls.ca),
            ("etcd_cert", &cert),
            ("etcd_key", &key),
            ("etcd_user", Path::new("depot")),
            ("etcd_password_file", &pw),
        ];
        let t1 = Instant::now();
        let routers: Vec<Depot> = ["r1", "r2"]
            .iter()
            .map(|n| Depot::start(&secured_config(n, &etcd.endpoints_arg(), &creds)))
            .collect();
        let joined = t1.elapsed();

        let list = routers[1].json(&["router", "list"]);
        let rows = list.as_array().unwrap();
        assert_eq!(rows.len(), 2, "{list}");
        assert!(rows.iter().all(|r| r["state"] == "up"), "{list}");

        routers[0].cli_ok(&["vm", "create", "web1"]);
        eventually(Duration::from_secs(5), "r2 sees r1's VM", || {
            vm_names(&routers[1]).contains(&"web1".to_string())
        });

        // The state is in etcd under /depot, readable with the credentials ...
        let ca = tls.ca.to_str().unwrap();
        let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
        let with_cert = ["--cacert", ca, "--cert", cert, "--key", key];
        let user = format!("--user=depot:{ETCD_PASSWORD}");
        let mut flags = with_cert.to_vec();
        flags.push(&user);
        let ok = outsider_etcdctl(&etcd, &flags, &["get", "--prefix", "--keys-only", "/depot"]);
        let keys = String::from_utf8_lossy(&ok.stdout);
        assert!(ok.status.success() && keys.contains("web1"), "{keys}");
        // ... and to nobody else: not without the user (the client
        // certificate alone names no etcd user), not with a wrong password,
        // not without a client certificate, not without the CA.
        let wrong = "--user=depot:not-the-password".to_string();
        let mut wrong_flags = with_cert.to_vec();
        wrong_flags.push(&wrong);
        let mut no_cert = vec!["--cacert", ca];
        no_cert.push(&user);
        for (what, flags, expect) in [
            ("no user", with_cert.to_vec(), "permission denied"),
            ("wrong password", wrong_flags, "authentication failed"),
            ("no client certificate", no_cert, ""),
            ("no CA", vec![user.as_str()], ""),
        ] {
            let out = outsider_etcdctl(&etcd, &flags, &["get", "--prefix", "/depot"]);
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{what}: etcd answered");
            assert!(err.contains(expect), "{what}: {err}");
            assert!(
                !String::from_utf8_lossy(&out.stdout).contains("web1"),
                "{what}"
            );
        }

        // The routers outlive a restart of every etcd member (etcd forgets
        // the auth tokens it handed out): both are up again, and a change
        // through r2 reaches r1.
        let t2 = Instant::now();
        etcd.restart_all();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = routers[1].cli(&["vm", "create", "web2"]);
            if out.status.success() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "r2 cannot create a VM 30 s after etcd restarted: {}\nr2's log:\n{}",
                String::from_utf8_lossy(&out.stderr),
                routers[1].log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        eventually(Duration::from_secs(10), "r1 sees r2's VM", || {
            vm_names(&routers[0]).contains(&"web2".to_string())
        });
        eventually(Duration::from_secs(30), "both routers up again", || {
            let list = routers[0].json(&["router", "list"]);
            let rows = list.as_array().unwrap();
            rows.len() == 2 && rows.iter().all(|r| r["state"] == "up")
        });
        eprintln!(
            "secured etcd: set-up {set_up:?}, two routers joined in {joined:?}, \
             back after an etcd restart in {:?}",
            t2.elapsed()
        );
    }

    #[test]
    fn a_router_without_valid_etcd_credentials_is_refused_clearly() {
        let mut etcd = EtcdCluster::start_tls(1, false);
        etcd.enable_auth("depot", ETCD_PASSWORD, "/depot");
        let ca = etcd.tls().unwrap().ca.clone();
        let secrets = tempfile::tempdir().unwrap();
        let wrong = password_file(secrets.path(), "not-the-password");
        let right = password_file(secrets.path(), ETCD_PASSWORD);
        let eps = etcd.endpoints_arg();

        // A wrong password, and an unknown user: etcd refuses the credentials.
        for (user, pw) in [("depot", &wrong), ("intruder", &right)] {
            let cfg = secured_config(
                "r1",
                &eps,
                &[
                    ("etcd_ca", &ca),
                    ("etcd_user", Path::new(user)),
                    ("etcd_password_file", pw),
                ],
            );
            let (msg, took) = serve_refused(&cfg);
            eprintln!("{user} with a wrong password ({took:?}): {msg}");
            assert!(
                msg.contains("etcd") && msg.contains("authentication") && msg.contains(user),
                "{msg}"
            );
            assert!(!msg.contains("not-the-password") && !msg.contains(ETCD_PASSWORD));
            assert!(took < Duration::from_secs(10), "{took:?}");
        }

        // No user at all on an etcd that requires one.
        let (msg, took) = serve_refused(&secured_config("r1", &eps, &[("etcd_ca", &ca)]));
        eprintln!("no etcd user ({took:?}): {msg}");
        assert!(msg.contains("etcd") && msg.contains("user"), "{msg}");

        // A user that may not touch the configured prefix.
        let mut cfg = secured_config(
            "r1",
            &eps,
            &[
                ("etcd_ca", &ca),
                ("etcd_user", Path::new("depot")),
                ("etcd_password_file", &right),
            ],
        );
        cfg.push_str("prefix = \"/elsewhere\"\n");
        let (msg, took) = serve_refused(&cfg);
        eprintln!("user without permission on the prefix ({took:?}): {msg}");
        assert!(msg.contains("etcd") && msg.contains("permission"), "{msg}");

        // Nothing was written: the cluster has no router.
        let out = etcd.etcdctl_ok(&["get", "--prefix", "--keys-only", "/"]);
        let keys = String::from_utf8_lossy(&out.stdout);
        assert!(!keys.contains("r1"), "{keys}");
    }

    #[test]
    fn a_router_without_the_etcd_ca_or_client_cert_is_refused_clearly() {
        let etcd = EtcdCluster::start_tls(1, true);
        let tls = etcd.tls().unwrap().clone();
        let (cert, key) = tls.client.clone().unwrap();
        let https = etcd.endpoints_arg();
        let plain = https.replace("https://", "http://");
        let other = tempfile::tempdir().unwrap();
        let (foreign_ca, _) = depot_testkit::etcd::make_ca(other.path(), "foreign", "another CA");

        // (what is wrong, endpoints, settings, what the error must say)
        let cases: [(&str, &str, Settings, &str); 4] = [
            (
                "plain http to a TLS etcd",
                &plain,
                vec![],
                "give https:// endpoints and etcd_ca",
            ),
            (
                "https without etcd_ca",
                &https,
                vec![],
                "etcd_ca is not set",
            ),
            (
                "a CA that did not sign etcd's certificate",
                &https,
                vec![
                    ("etcd_ca", foreign_ca.as_path()),
                    ("etcd_cert", &cert),
                    ("etcd_key", &key),
                ],
                "not signed by the CA in etcd_ca",
            ),
            (
                "no client certificate",
                &https,
                vec![("etcd_ca", tls.ca.as_path())],
                "set etcd_cert and etcd_key",
            ),
        ];
        for (what, eps, extra, says) in cases {
            let (msg, took) = serve_refused(&secured_config("r1", eps, &extra));
            eprintln!("{what} ({took:?}): {msg}");
            assert!(
                msg.contains("etcd") && msg.contains(eps) && msg.contains(says),
                "{what}: {msg}"
            );
            assert!(took < Duration::from_secs(15), "{what}: {took:?}");
        }
        // A user for an etcd whose authentication is off is a mistake too.
        let secrets = tempfile::tempdir().unwrap();
        let pw = password_file(secrets.path(), ETCD_PASSWORD);
        let (msg, took) = serve_refused(&secured_config(
            "r1",
            &https,
            &[
                ("etcd_ca", &tls.ca),
                ("etcd_cert", &cert),
                ("etcd_key", &key),
                ("etcd_user", Path::new("depot")),
                ("etcd_password_file", &pw),
            ],
        ));
        eprintln!("a user for an etcd without authentication ({took:?}): {msg}");
        assert!(msg.contains("authentication is not enabled"), "{msg}");
        // The right files are enough.
        let ok = Depot::start(&secured_config(
            "r1",
            &https,
            &[
                ("etcd_ca", &tls.ca),
                ("etcd_cert", &cert),
                ("etcd_key", &key),
            ],
        ));
        assert_eq!(ok.json(&["router", "list"]).as_array().unwrap().len(), 1);
    }
}

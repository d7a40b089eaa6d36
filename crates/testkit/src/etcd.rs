//! A real etcd cluster of N members on 127.0.0.1, each a child process of
//! the test with its data in a temporary directory, killed when dropped.
//! Uses the `etcd` binary on `PATH` (Debian's etcd-server, 3.4).
//!
//! A cluster may serve its clients over TLS ([`EtcdCluster::start_tls`]):
//! a test CA (P-256) made with the `openssl` tool (Debian's openssl, which
//! ca-certificates pulls in) signs a server certificate whose SAN holds IP
//! 127.0.0.1 (clients check the SAN, not the CN) and, when the members
//! require client certificates, a client certificate; peer traffic stays
//! plain. The files are made anew for each cluster and live 2 days.
//! [`EtcdCluster::enable_auth`] turns on etcd's own authentication with a
//! `root` user and one user limited to a key prefix. Every `etcdctl` the
//! cluster runs itself (health checks, the auth set-up) uses the CA, the
//! client certificate and `root` once they exist.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A running etcd cluster.
#[derive(Debug)]
pub struct EtcdCluster {
    dir: tempfile::TempDir,
    members: Vec<Member>,
    initial: String,
    tls: Option<TlsFiles>,
    root_password: Option<String>,
}

#[derive(Debug)]
struct Member {
    name: String,
    client: u16,
    peer: u16,
    child: Option<Child>,
}

/// The PEM files of a TLS cluster (in the cluster's temporary directory).
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The test CA's certificate: what a client needs to trust the members.
    pub ca: PathBuf,
    /// The members' server certificate (SAN IP 127.0.0.1, DNS localhost).
    pub server_cert: PathBuf,
    /// Its key.
    pub server_key: PathBuf,
    /// A client certificate signed by the CA and its key, when the members
    /// require client certificates (`--client-cert-auth`). Its common name,
    /// `depot-tls-client`, is no etcd user: once authentication is on, a
    /// client needs a user and password besides (etcd would take a
    /// certificate's CN that names a user as that user, password-less).
    pub client: Option<(PathBuf, PathBuf)>,
}

use crate::free_port;

/// `openssl` extension sections for the test PKI (no system openssl.cnf
/// is read, so the certificates are the same on every machine).
const OPENSSL_CNF: &str = "\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = unused
[ca_ext]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[server_ext]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth,clientAuth
subjectAltName = IP:127.0.0.1,DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[client_ext]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
";

/// Runs `openssl ARGS` in `dir`, panicking with its stderr on failure.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("openssl (Debian package openssl) on PATH");
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Writes a new P-256 key `NAME.key` and a self-signed CA certificate
/// `NAME.pem` with the common name `cn` into `dir`; returns both paths.
pub fn make_ca(dir: &Path, name: &str, cn: &str) -> (PathBuf, PathBuf) {
    std::fs::write(dir.join("openssl.cnf"), OPENSSL_CNF).expect("openssl.cnf");
    let key = format!("{name}.key");
    let pem = format!("{name}.pem");
    openssl(
        dir,
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            &key,
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-config",
            "openssl.cnf",
            "-new",
            "-x509",
            "-key",
            &key,
            "-subj",
            &format!("/CN={cn}"),
            "-days",
            "2",
            "-extensions",
            "ca_ext",
            "-out",
            &pem,
        ],
    );
    (dir.join(pem), dir.join(key))
}

/// Writes a key `NAME.key` and a certificate `NAME.pem` for `cn` signed by
/// the CA `ca` (made by [`make_ca`] in `dir`) with the extension section
/// `ext` of the test openssl.cnf.
fn sign(dir: &Path, ca: &str, name: &str, cn: &str, ext: &str, serial: u32) -> (PathBuf, PathBuf) {
    let key = format!("{name}.key");
    let csr = format!("{name}.csr");
    let pem = format!("{name}.pem");
    openssl(
        dir,
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            &key,
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-config",
            "openssl.cnf",
            "-new",
            "-key",
            &key,
            "-subj",
            &format!("/CN={cn}"),
            "-out",
            &csr,
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-set_serial",
            &serial.to_string(),
            "-days",
            "2",
            "-extfile",
            "openssl.cnf",
            "-extensions",
            ext,
            "-out",
            &pem,
        ],
    );
    (dir.join(pem), dir.join(key))
}

impl TlsFiles {
    /// Makes a CA, a server certificate for 127.0.0.1 and, with
    /// `client_cert`, a client certificate, all in `dir`.
    fn generate(dir: &Path, client_cert: bool) -> TlsFiles {
        let (ca, _) = make_ca(dir, "ca", "depot test etcd CA");
        let (server_cert, server_key) = sign(dir, "ca", "server", "127.0.0.1", "server_ext", 2);
        let client =
            client_cert.then(|| sign(dir, "ca", "client", "depot-tls-client", "client_ext", 3));
        TlsFiles {
            ca,
            server_cert,
            server_key,
            client,
        }
    }
}

impl EtcdCluster {
    /// Starts `n` members and waits until the cluster answers.
    pub fn start(n: usize) -> EtcdCluster {
        EtcdCluster::launch(n, None)
    }

    /// Starts `n` members that serve clients only over TLS (https:// URLs,
    /// a server certificate for 127.0.0.1 signed by a test CA) and, with
    /// `client_cert_auth`, only to clients with a certificate signed by
    /// that CA; waits until the cluster answers. See [`EtcdCluster::tls`].
    pub fn start_tls(n: usize, client_cert_auth: bool) -> EtcdCluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = dir.path().join("pki");
        std::fs::create_dir(&pki).expect("pki dir");
        let tls = TlsFiles::generate(&pki, client_cert_auth);
        EtcdCluster::launch_in(dir, n, Some(tls))
    }

    fn launch(n: usize, tls: Option<TlsFiles>) -> EtcdCluster {
        EtcdCluster::launch_in(tempfile::tempdir().expect("tempdir"), n, tls)
    }

    fn launch_in(dir: tempfile::TempDir, n: usize, tls: Option<TlsFiles>) -> EtcdCluster {
        let members: Vec<Member> = (1..=n)
            .map(|i| Member {
                name: format!("e{i}"),
                client: free_port(),
                peer: free_port(),
                child: None,
            })
            .collect();
        let initial = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer))
            .collect::<Vec<_>>()
            .join(",");
        let mut c = EtcdCluster {
            dir,
            members,
            initial,
            tls,
            root_password: None,
        };
        for i in 0..n {
            c.spawn(i, "new");
        }
        c.wait_healthy(Duration::from_secs(30));
        c
    }

    /// The TLS files of a cluster started with [`EtcdCluster::start_tls`].
    pub fn tls(&self) -> Option<&TlsFiles> {
        self.tls.as_ref()
    }

    /// The cluster's temporary directory (logs, data, the test PKI).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }

    fn data_dir(&self, i: usize) -> PathBuf {
        self.dir
            .path()
            .join(format!("{}.etcd", self.members[i].name))
    }

    fn spawn(&mut self, i: usize, state: &str) {
        let log = std::fs::File::create(
            self.dir
                .path()
                .join(format!("{}.log", self.members[i].name)),
        )
        .expect("etcd log");
        let m = &self.members[i];
        let client_url = format!("{}://127.0.0.1:{}", self.scheme(), m.client);
        let mut cmd = Command::new("etcd");
        cmd.args([
            "--name",
            &m.name,
            "--data-dir",
            &self.data_dir(i).to_string_lossy(),
            "--listen-client-urls",
            &client_url,
            "--advertise-client-urls",
            &client_url,
            "--listen-peer-urls",
            &format!("http://127.0.0.1:{}", m.peer),
            "--initial-advertise-peer-urls",
            &format!("http://127.0.0.1:{}", m.peer),
            "--initial-cluster",
            &self.initial,
            "--initial-cluster-token",
            "depot-test",
            "--initial-cluster-state",
            state,
            "--heartbeat-interval",
            "50",
            "--election-timeout",
            "500",
        ]);
        if let Some(t) = &self.tls {
            cmd.arg("--cert-file")
                .arg(&t.server_cert)
                .arg("--key-file")
                .arg(&t.server_key);
            // etcd 3.4 requires client certificates as soon as it is given
            // a CA to check them with.
            if t.client.is_some() {
                cmd.arg("--trusted-ca-file")
                    .arg(&t.ca)
                    .arg("--client-cert-auth");
            }
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("etcd (Debian package etcd-server) on PATH");
        self.members[i].child = Some(child);
    }

    /// Client URLs of every member.
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("{}://127.0.0.1:{}", self.scheme(), m.client))
            .collect()
    }

    /// Client URLs, comma-separated (as `--etcd` takes them).
    pub fn endpoints_arg(&self) -> String {
        self.endpoints().join(",")
    }

    /// An `etcdctl` (API 3) for every endpoint with the cluster's CA and
    /// client certificate, and as `root` once [`EtcdCluster::enable_auth`]
    /// ran.
    pub fn etcdctl(&self) -> Command {
        let mut cmd = Command::new("etcdctl");
        cmd.env("ETCDCTL_API", "3")
            .arg("--endpoints")
            .arg(self.endpoints_arg())
            .arg("--command-timeout=1s");
        if let Some(t) = &self.tls {
            cmd.arg("--cacert").arg(&t.ca);
            if let Some((cert, key)) = &t.client {
                cmd.arg("--cert").arg(cert).arg("--key").arg(key);
            }
        }
        if let Some(p) = &self.root_password {
            cmd.arg("--user").arg(format!("root:{p}"));
        }
        cmd.stdin(Stdio::null());
        cmd
    }

    /// Runs `etcdctl ARGS` (see [`EtcdCluster::etcdctl`]) and requires
    /// success; returns its output.
    pub fn etcdctl_ok(&self, args: &[&str]) -> Output {
        let out = self
            .etcdctl()
            .args(args)
            .output()
            .expect("etcdctl (Debian package etcd-client) on PATH");
        assert!(
            out.status.success(),
            "etcdctl {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Turns on etcd's own authentication (etcd 3.4's etcdctl): a user
    /// `root` (role `root`) with a random password, which this cluster's
    /// own `etcdctl` uses from then on, and a user `user` with `password`
    /// whose role `USER-rw` may read and write the keys under `prefix`
    /// and nothing else.
    pub fn enable_auth(&mut self, user: &str, password: &str, prefix: &str) {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let root = format!("root-{nanos:x}-{}", std::process::id());
        let role = format!("{user}-rw");
        self.etcdctl_ok(&["user", "add", &format!("root:{root}")]);
        self.etcdctl_ok(&["user", "grant-role", "root", "root"]);
        self.etcdctl_ok(&["role", "add", &role]);
        self.etcdctl_ok(&[
            "role",
            "grant-permission",
            &role,
            "--prefix=true",
            "readwrite",
            prefix,
        ]);
        self.etcdctl_ok(&["user", "add", &format!("{user}:{password}")]);
        self.etcdctl_ok(&["user", "grant-role", user, &role]);
        self.etcdctl_ok(&["auth", "enable"]);
        self.root_password = Some(root);
        self.wait_healthy(Duration::from_secs(30));
    }

    /// Sends SIGSTOP (`pause`) or SIGCONT to member `i`.
    pub fn signal(&self, i: usize, sig: &str) {
        if let Some(c) = &self.members[i].child {
            let _ = Command::new("kill")
                .arg(format!("-{sig}"))
                .arg(c.id().to_string())
                .status();
        }
    }

    /// Kills member `i` with SIGKILL.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Kills every member.
    pub fn kill_all(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }

    /// Restarts member `i` from its data directory.
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        self.spawn(i, "existing");
    }

    /// Restarts every member and waits until the cluster answers.
    pub fn restart_all(&mut self) {
        for i in 0..self.members.len() {
            self.restart(i);
        }
        self.wait_healthy(Duration::from_secs(30));
    }

    /// Waits until a linearizable read succeeds through every endpoint.
    pub fn wait_healthy(&self, limit: Duration) {
        let start = Instant::now();
        loop {
            let ok = self
                .etcdctl()
                .args(["get", "--limit=1", "/"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return;
            }
            assert!(
                start.elapsed() < limit,
                "etcd did not become healthy within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        self.kill_all();
    }
}

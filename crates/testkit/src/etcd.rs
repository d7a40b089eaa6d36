//! A real etcd cluster of N members on 127.0.0.1, each a child process of
//! the test with its data in a temporary directory, killed when dropped.
//! Uses the `etcd` binary on `PATH` (Debian's etcd-server, 3.4).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running etcd cluster.
#[derive(Debug)]
pub struct EtcdCluster {
    dir: tempfile::TempDir,
    members: Vec<Member>,
    initial: String,
}

#[derive(Debug)]
struct Member {
    name: String,
    client: u16,
    peer: u16,
    child: Option<Child>,
}

use crate::free_port;

impl EtcdCluster {
    /// Starts `n` members and waits until the cluster answers.
    pub fn start(n: usize) -> EtcdCluster {
        let dir = tempfile::tempdir().expect("tempdir");
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
        };
        for i in 0..n {
            c.spawn(i, "new");
        }
        c.wait_healthy(Duration::from_secs(30));
        c
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
        let child = Command::new("etcd")
            .args([
                "--name",
                &m.name,
                "--data-dir",
                &self.data_dir(i).to_string_lossy(),
                "--listen-client-urls",
                &format!("http://127.0.0.1:{}", m.client),
                "--advertise-client-urls",
                &format!("http://127.0.0.1:{}", m.client),
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
            ])
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
            .map(|m| format!("http://127.0.0.1:{}", m.client))
            .collect()
    }

    /// Client URLs, comma-separated (as `--etcd` takes them).
    pub fn endpoints_arg(&self) -> String {
        self.endpoints().join(",")
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
            let ok = Command::new("etcdctl")
                .env("ETCDCTL_API", "3")
                .args([
                    "--endpoints",
                    &self.endpoints_arg(),
                    "--command-timeout=1s",
                    "get",
                    "--limit=1",
                    "/",
                ])
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

//! Servers a chaos test may kill: a private `redis-server` and a private PostgreSQL cluster, both
//! on fixed free ports so they come back where the fleet expects them; and the lock that runs one
//! chaos test at a time.

use std::{
    path::PathBuf,
    process::Stdio,
    time::{Duration, Instant},
};

use rand::Rng;

/// A free TCP port on 127.0.0.1 (for servers that must come back on the same port).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn wait_port(port: u16, up: bool, what: &str) {
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() != up {
        assert!(start.elapsed() < Duration::from_secs(20), "{what} on port {port} did not come {}", updown(up));
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn updown(up: bool) -> &'static str {
    if up { "up" } else { "down" }
}

/// One chaos test at a time on this machine: each starts a producer, several workers and servers,
/// and two at once on 2 cores starve the heartbeats they measure. Held until dropped.
pub struct Serial(std::fs::File);

impl Serial {
    pub async fn acquire() -> Serial {
        let path = std::env::temp_dir().join("syncfleet-chaos.lock");
        let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(path).unwrap();
        tokio::task::spawn_blocking(move || {
            file.lock().expect("lock the chaos lock file");
            Serial(file)
        })
        .await
        .unwrap()
    }
}

impl Drop for Serial {
    fn drop(&mut self) {
        self.0.unlock().ok();
    }
}

/// A `redis-server` on a fixed free port that can be killed and started again on that port.
pub struct RestartableRedis {
    pub port: u16,
    child: Option<std::process::Child>,
}

impl RestartableRedis {
    pub fn start() -> RestartableRedis {
        let mut r = RestartableRedis { port: free_port(), child: None };
        r.up();
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts the server (empty: no persistence).
    pub fn up(&mut self) {
        assert!(self.child.is_none(), "redis is already running");
        let child = std::process::Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server on PATH");
        self.child = Some(child);
        wait_port(self.port, true, "redis");
    }

    /// SIGKILLs the server: every key is gone.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().ok();
            c.wait().ok();
        }
        wait_port(self.port, false, "redis");
    }
}

impl Drop for RestartableRedis {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().ok();
            c.wait().ok();
        }
    }
}

/// A private PostgreSQL cluster (`initdb` + `pg_ctl` as user postgres) on a free port, in a
/// temporary directory removed on drop. Durable enough for a crash (`pg_ctl -m immediate`).
pub struct PrivatePostgres {
    pub port: u16,
    dir: PathBuf,
}

impl PrivatePostgres {
    pub fn start() -> PrivatePostgres {
        let dir = std::env::temp_dir().join(format!("sf-chaos-pg-{:08x}", rand::rng().random::<u32>()));
        std::fs::create_dir_all(&dir).unwrap();
        let status = std::process::Command::new("chown").args(["postgres:postgres"]).arg(&dir).status().unwrap();
        assert!(status.success(), "chown {}", dir.display());
        let pg = PrivatePostgres { port: free_port(), dir };
        as_postgres(&["initdb", "-D", &pg.data(), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"]);
        pg.up();
        pg
    }

    fn data(&self) -> String {
        self.dir.join("data").display().to_string()
    }

    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Starts the server. Its WAL writer writes commits that did not wait for the disk late (every
    /// 10 s, PostgreSQL's longest), as a busy server's may: a crash loses any such commit that no
    /// later commit waited for.
    pub fn up(&self) {
        let opts = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} -c max_connections=300 -c fsync=off -c wal_writer_delay=10s",
            self.port,
            self.dir.display()
        );
        let log = self.dir.join("server.log").display().to_string();
        as_postgres(&["pg_ctl", "-D", &self.data(), "-o", &opts, "-l", &log, "-w", "-s", "start"]);
        wait_port(self.port, true, "postgres");
    }

    /// Stops the server the hard way (`-m immediate`: no checkpoint, connections cut; the next
    /// start recovers from the WAL, as after a crash).
    pub fn crash(&self) {
        as_postgres(&["pg_ctl", "-D", &self.data(), "-m", "immediate", "-w", "-s", "stop"]);
        wait_port(self.port, false, "postgres");
    }
}

fn as_postgres(args: &[&str]) {
    let out = std::process::Command::new("runuser").args(["-u", "postgres", "--"]).args(args).output().unwrap();
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = std::process::Command::new("runuser")
            .args(["-u", "postgres", "--", "pg_ctl", "-D", &self.data(), "-m", "immediate", "-w", "-s", "stop"])
            .stderr(Stdio::null())
            .status();
        std::fs::remove_dir_all(&self.dir).ok();
    }
}

//! A throwaway `redis-server` on loopback for tests that need a real Redis.
//!
//! [`RedisServer::start`] launches `redis-server` on a free port without persistence and
//! waits until it accepts connections; when `redis-server` is not installed it prints a
//! `SKIPPED:` reason and returns `None`, so the calling test can return early. The server
//! is killed when the handle is dropped (or earlier with [`RedisServer::kill`], to
//! simulate an outage).

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running `redis-server` child process bound to `127.0.0.1:port`.
pub struct RedisServer {
    child: Child,
    /// The loopback port the server listens on.
    pub port: u16,
}

impl RedisServer {
    /// Starts a `redis-server` on a free loopback port, or prints why not and returns
    /// `None` when the binary is absent.
    ///
    /// # Panics
    /// When `redis-server` is installed but cannot be started or does not accept
    /// connections within 5 s (a broken environment, not a reason to skip).
    #[allow(clippy::print_stdout)] // the skip reason is meant for the test output
    pub fn start() -> Option<RedisServer> {
        if Command::new("redis-server")
            .arg("--version")
            .output()
            .is_err()
        {
            println!("SKIPPED: redis-server is not installed (apt-get install redis-server)");
            return None;
        }
        let port = match TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()) {
            Ok(addr) => addr.port(),
            Err(e) => panic!("no free loopback port for redis-server: {e}"),
        };
        let child = match Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
        {
            Ok(child) => child,
            Err(e) => panic!("cannot start redis-server: {e}"),
        };
        let server = RedisServer { child, port };
        for _ in 0..100 {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Some(server);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("redis-server did not start on port {port}");
    }

    /// Kills the server now and waits for it to exit (simulates a Redis outage).
    pub fn kill(&mut self) -> std::io::Result<()> {
        self.child.kill()?;
        self.child.wait().map(|_| ())
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

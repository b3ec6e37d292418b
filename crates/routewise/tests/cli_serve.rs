//! `routewise serve` as a process: signals, start-up order, exit codes (issue 11's
//! regression tests that need a real process).
#![cfg(test)]
#![cfg(unix)]

mod common;

use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A free loopback port.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `routewise serve` (the demo) on `port`, with `env`; stderr lines arrive on the channel.
fn serve(port: u16, env: &[(&str, &str)]) -> (Child, mpsc::Receiver<String>) {
    serve_with(port, &[], env)
}

/// [`serve`] with more arguments.
fn serve_with(port: u16, args: &[&str], env: &[(&str, &str)]) -> (Child, mpsc::Receiver<String>) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_routewise"));
    cmd.args([
        "serve",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--threads",
        "2",
    ])
    .args(args)
    .env("ROUTEWISE_LOG", "info")
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn routewise serve");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

/// Waits for a stderr line containing `needle`.
fn wait_for(rx: &mpsc::Receiver<String>, needle: &str, limit: Duration) -> Option<String> {
    let end = Instant::now() + limit;
    while let Some(left) = end.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(line) if line.contains(needle) => return Some(line),
            Ok(_) => {}
            Err(_) => return None,
        }
    }
    None
}

/// GET /healthz over a raw socket; whether it answered 200.
fn healthy(port: u16) -> bool {
    use std::io::Write;
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.starts_with("HTTP/1.1 200")
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{sig}"), &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{sig} failed");
}

/// Waits for the process to exit; its status and how long it took.
fn wait_exit(child: &mut Child, limit: Duration) -> Option<(std::process::ExitStatus, Duration)> {
    let started = Instant::now();
    while started.elapsed() < limit {
        if let Some(status) = child.try_wait().unwrap() {
            return Some((status, started.elapsed()));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

#[test]
fn regression_sighup_reloads_the_config_and_sigterm_stops_within_the_grace() {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gw.yaml");
    let demo = routewise_gateway::demo::DEMO_CONFIG;
    std::fs::write(&config, demo).unwrap();
    let (mut child, rx) = serve_with(
        port,
        &["--config", config.to_str().unwrap()],
        &[("ROUTEWISE_LIMITS__SHUTDOWN_GRACE_MS", "1000")],
    );
    assert!(wait_for(&rx, "listening", Duration::from_secs(60)).is_some());
    // Unchanged, changed, then invalid: the process serves throughout.
    signal(&child, "HUP");
    assert!(
        wait_for(&rx, "configuration unchanged", Duration::from_secs(10)).is_some(),
        "an unchanged file is not rebuilt"
    );
    std::fs::write(&config, demo.replace("lambda: 100", "lambda: 5")).unwrap();
    signal(&child, "HUP");
    assert!(
        wait_for(&rx, "configuration reloaded", Duration::from_secs(30)).is_some(),
        "SIGHUP must reload the file"
    );
    std::fs::write(&config, format!("{demo}\nnot_a_field: 1\n")).unwrap();
    signal(&child, "HUP");
    assert!(
        wait_for(&rx, "configuration reload refused", Duration::from_secs(30)).is_some(),
        "a bad file is refused"
    );
    assert!(
        child.try_wait().unwrap().is_none(),
        "SIGHUP must not stop the gateway"
    );
    assert!(healthy(port));

    // A half-open request must not hold the shutdown past the grace period.
    use std::io::Write;
    let mut half = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    half.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    signal(&child, "TERM");
    let (status, took) =
        wait_exit(&mut child, Duration::from_secs(10)).expect("SIGTERM must end the process");
    assert!(status.success(), "{status}");
    assert!(took < Duration::from_millis(3000), "{took:?}");
}

#[test]
fn thread_per_core_serves_and_stops_on_sigterm() {
    let port = free_port();
    let (mut child, rx) = serve_with(
        port,
        &["--runtime", "thread-per-core"],
        &[("ROUTEWISE_LIMITS__SHUTDOWN_GRACE_MS", "1000")],
    );
    assert!(wait_for(&rx, "listening", Duration::from_secs(60)).is_some());
    // Connections go round-robin over the two connection threads.
    for _ in 0..4 {
        assert!(healthy(port));
    }
    signal(&child, "TERM");
    let (status, took) =
        wait_exit(&mut child, Duration::from_secs(10)).expect("SIGTERM must end the process");
    assert!(status.success(), "{status}");
    assert!(took < Duration::from_millis(3000), "{took:?}");
}

#[test]
fn regression_a_locked_state_store_fails_before_listening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    let path = path.to_str().unwrap();
    let env = [
        ("ROUTEWISE_BANDIT__ALPHA", "0.5"),
        ("ROUTEWISE_STATE__PATH", path),
    ];
    let first_port = free_port();
    let (mut first, rx) = serve(first_port, &env);
    assert!(wait_for(&rx, "listening", Duration::from_secs(60)).is_some());

    let second = Command::new(env!("CARGO_BIN_EXE_routewise"))
        .args(["serve", "--listen", &format!("127.0.0.1:{}", free_port())])
        .env("ROUTEWISE_LOG", "info")
        .envs(env)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("state.path"), "{stderr}");
    assert!(!stderr.contains("listening"), "{stderr}");
    signal(&first, "TERM");
    assert!(wait_exit(&mut first, Duration::from_secs(10)).is_some());
}

/// A raw HTTP/1.1 GET with an optional bearer key; the status line.
fn get_status(port: u16, path: &str, key: Option<&str>) -> String {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let auth = key
        .map(|k| format!("Authorization: Bearer {k}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.lines().next().unwrap_or("").to_string()
}

#[test]
fn keys_go_through_the_admin_api_while_a_gateway_holds_the_state_file() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = dir.path().join("gw.yaml");
    std::fs::write(
        &cfg,
        format!(
            "listen: 127.0.0.1:{port}\nrouter: {{mode: rules}}\nauth: {{mode: keys}}\nstate: {{path: \"{}\"}}\nmodels:\n  - {{name: small, base_url: \"http://127.0.0.1:9/v1\", price: {{input_per_mtok: 0.1, output_per_mtok: 0.1}}}}\n",
            dir.path().join("state.redb").display()
        ),
    )
    .unwrap();
    let cfg = cfg.to_str().unwrap();
    let admin = [("ROUTEWISE_ADMIN_KEY", "an-admin-key")];
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_routewise"));
    cmd.args(["serve", "--config", cfg])
        .env("ROUTEWISE_LOG", "info")
        .envs(admin)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut gw = cmd.spawn().unwrap();
    let stderr = gw.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut seen = Vec::new();
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(60)) {
        let up = line.contains("listening");
        seen.push(line);
        if up {
            break;
        }
    }
    assert!(
        seen.last().is_some_and(|l| l.contains("listening")),
        "the gateway did not start: {seen:?}"
    );
    assert!(get_status(port, "/v1/models", None).contains(" 401 "));

    let keys = |args: &[&str], env: &[(&str, &str)]| {
        Command::new(env!("CARGO_BIN_EXE_routewise"))
            .args(["keys", "--config", cfg])
            .args(args)
            .envs(env.iter().copied())
            .output()
            .unwrap()
    };
    // Without the admin key the held file cannot be managed, and the message says how.
    let refused = keys(&["list"], &[]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("ROUTEWISE_ADMIN_KEY"));

    let made = keys(&["create", "--name", "ci"], &admin);
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let key = String::from_utf8(made.stdout).unwrap().trim().to_string();
    assert!(get_status(port, "/v1/models", Some(&key)).contains(" 200 "));
    let revoked = keys(&["revoke", &key[3..13]], &admin);
    assert!(
        revoked.status.success(),
        "{}",
        String::from_utf8_lossy(&revoked.stderr)
    );
    // The gateway's cache saw the revocation at once.
    assert!(get_status(port, "/v1/models", Some(&key)).contains(" 401 "));
    signal(&gw, "TERM");
    assert!(wait_exit(&mut gw, Duration::from_secs(10)).is_some());
}

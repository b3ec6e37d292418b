//! OTLP export (the `otel` feature): `routewise serve` sends its request and attempt spans
//! to a collector, in the client's trace. Run with
//! `cargo test -p routewise --features otel --test otel`.
#![cfg(test)]
#![cfg(feature = "otel")]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A minimal OTLP/HTTP collector: answers every POST with 200 and hands the request
/// (path and body) to the channel.
fn collector() -> (u16, mpsc::Receiver<(String, Vec<u8>)>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for conn in listener.incoming().map_while(Result::ok) {
            let tx = tx.clone();
            std::thread::spawn(move || serve_one(conn, &tx));
        }
    });
    (port, rx)
}

fn serve_one(conn: TcpStream, tx: &mpsc::Sender<(String, Vec<u8>)>) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut conn = conn;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
        let mut len = 0usize;
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0u8; len];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let _ = tx.send((path, body));
        let _ = conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn spans_are_exported_in_the_clients_trace() {
    let (collector_port, exports) = collector();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_routewise"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .env("ROUTEWISE_LOG", "warn")
        .env(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("http://127.0.0.1:{collector_port}"),
        )
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let mut conn = loop {
        if let Ok(c) = TcpStream::connect(("127.0.0.1", port)) {
            break c;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "serve did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let body = r#"{"model":"auto","messages":[{"role":"user","content":"hello"}]}"#;
    write!(
        conn,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\ntraceparent: 00-{trace}-00f067aa0ba902b7-01\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut resp = String::new();
    conn.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(
        resp.contains(&format!("traceparent: 00-{trace}-")),
        "{resp}"
    );

    // The batch arrives within a few schedule delays.
    let trace_bytes: Vec<u8> = (0..16)
        .map(|i| u8::from_str_radix(&trace[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok((path, body)) = exports.recv_timeout(Duration::from_millis(200)) {
            assert_eq!(path, "/v1/traces");
            seen.extend(body);
            if contains(&seen, b"attempt") && contains(&seen, b"request") {
                break;
            }
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(contains(&seen, b"request"), "no request span exported");
    assert!(contains(&seen, b"attempt"), "no attempt span exported");
    assert!(
        contains(&seen, b"routewise"),
        "the service name is routewise"
    );
    assert!(
        contains(&seen, &trace_bytes),
        "the spans belong to the client's trace"
    );
}

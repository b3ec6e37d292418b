//! `routewise-mock`: the testkit's mock OpenAI upstream as a small binary, for the
//! end-to-end tests and the gateway benchmark.
//!
//! Usage: `routewise-mock [--listen 127.0.0.1:9001] [--record]`. Prints `listening on ADDR`
//! once ready. Faults are chosen by the requested model name (`mock-500`, `mock-reset`, ...;
//! see the library docs).

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;

use routewise_testkit::{serve, MockOptions};

fn main() -> ExitCode {
    let mut listen = "127.0.0.1:9001".to_string();
    let mut record = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--listen" => match args.next() {
                Some(v) => listen = v,
                None => return usage("--listen needs an address"),
            },
            "--record" => record = true,
            other => return usage(&format!("unknown argument `{other}`")),
        }
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return usage(&format!("cannot start runtime: {e}")),
    };
    rt.block_on(async move {
        let listener = match tokio::net::TcpListener::bind(&listen).await {
            Ok(l) => l,
            Err(e) => return usage(&format!("cannot listen on {listen}: {e}")),
        };
        let addr = listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or(listen);
        let _ = writeln!(std::io::stdout(), "listening on {addr}");
        let _ = std::io::stdout().flush();
        let state = Arc::new(routewise_testkit::MockState::with_options(&MockOptions {
            record,
        }));
        tokio::select! {
            _ = serve(listener, state) => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        ExitCode::SUCCESS
    })
}

fn usage(msg: &str) -> ExitCode {
    let _ = writeln!(
        std::io::stderr(),
        "routewise-mock: {msg}\nusage: routewise-mock [--listen ADDR] [--record]"
    );
    ExitCode::from(2)
}

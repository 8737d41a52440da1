//! The forwarder: the first process of a `model` run inside its sandbox (the `gantry`
//! binary's hidden `sandbox-forward` subcommand).
//!
//! `sandbox-forward --socket PATH --port N -- PROGRAM ARGS...` listens on
//! `127.0.0.1:N` in the sandbox's own network namespace, starts the program, and
//! carries every connection to that port over to the Unix socket `PATH`, where the
//! factory's egress proxy answers. It passes the usual stop signals on to the program,
//! reaps whatever ends below it (in a container it is the first process), and exits
//! with the program's status (128+N when a signal N ended it), so it stands in for the
//! program in every way the factory looks at.

use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::signal::unix::{SignalKind, signal};

/// Connections carried at once (the proxy has its own, lower, bound per run).
const MAX_CONNECTIONS: usize = 256;

/// Signals passed on to the program.
const FORWARDED: [Signal; 6] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
];

/// The parsed command line.
#[derive(Debug, PartialEq)]
struct Args {
    socket: PathBuf,
    port: u16,
    argv: Vec<OsString>,
}

fn parse(args: &[OsString]) -> Result<Args, String> {
    let mut socket = None;
    let mut port = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.to_str() {
            Some("--socket") => socket = it.next().map(PathBuf::from),
            Some("--port") => {
                let p = it.next().and_then(|p| p.to_str()).unwrap_or("");
                port = Some(
                    p.parse::<u16>()
                        .map_err(|_| format!("--port {p:?} is not a port"))?,
                );
            }
            Some("--") => break,
            _ => return Err(format!("unknown argument {a:?}")),
        }
    }
    let argv: Vec<OsString> = it.cloned().collect();
    match (socket, port, argv.is_empty()) {
        (Some(socket), Some(port), false) => Ok(Args { socket, port, argv }),
        _ => Err("usage: sandbox-forward --socket PATH --port N -- PROGRAM [ARGS...]".to_string()),
    }
}

/// Runs the forwarder with `args` (those after the subcommand); returns the exit
/// status to end with.
pub fn main(args: &[OsString]) -> i32 {
    let fail = |code: i32, msg: String| {
        let _ = writeln!(std::io::stderr(), "gantry sandbox-forward: {msg}");
        code
    };
    let args = match parse(args) {
        Ok(a) => a,
        Err(e) => return fail(2, e),
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(126, format!("cannot start: {e}")),
    };
    rt.block_on(run(args)).unwrap_or_else(|e| fail(126, e))
}

async fn run(args: Args) -> Result<i32, String> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", args.port))
        .await
        .map_err(|e| format!("cannot listen on 127.0.0.1:{}: {e}", args.port))?;
    // Every handler is in place before the program starts, so no end of it and no
    // stop signal is missed.
    let mut chld = signal(SignalKind::child()).map_err(|e| e.to_string())?;
    let mut streams = Vec::new();
    for s in FORWARDED {
        streams.push((
            s,
            signal(SignalKind::from_raw(s as i32)).map_err(|e| e.to_string())?,
        ));
    }
    let child = std::process::Command::new(&args.argv[0])
        .args(&args.argv[1..])
        .spawn();
    let child = match child {
        Ok(c) => Pid::from_raw(c.id() as i32),
        Err(e) => {
            let code = if e.kind() == std::io::ErrorKind::NotFound {
                127
            } else {
                126
            };
            let _ = writeln!(
                std::io::stderr(),
                "gantry sandbox-forward: cannot start {:?}: {e}",
                args.argv[0]
            );
            return Ok(code);
        }
    };
    tokio::spawn(accept_loop(listener, args.socket));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for (sig, mut stream) in streams {
        let tx = tx.clone();
        tokio::spawn(async move {
            while stream.recv().await.is_some() {
                let _ = tx.send(sig);
            }
        });
    }
    loop {
        if let Some(code) = reap(child) {
            return Ok(code);
        }
        tokio::select! {
            _ = chld.recv() => {}
            Some(sig) = rx.recv() => { let _ = kill(child, sig); }
        }
    }
}

/// Reaps every ended child; the program's status once it ended.
fn reap(child: Pid) -> Option<i32> {
    let mut found = None;
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) if pid == child => found = Some(code),
            Ok(WaitStatus::Signaled(pid, sig, _)) if pid == child => found = Some(128 + sig as i32),
            Ok(WaitStatus::StillAlive) | Err(_) => return found,
            Ok(_) => {}
        }
    }
}

async fn accept_loop(listener: tokio::net::TcpListener, socket: PathBuf) {
    let open = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let Ok(permit) = open.clone().try_acquire_owned() else {
            continue;
        };
        let socket = socket.clone();
        tokio::spawn(async move {
            if let Ok(mut unix) = tokio::net::UnixStream::connect(&socket).await {
                let mut tcp = tcp;
                let _ = tokio::io::copy_bidirectional(&mut tcp, &mut unix).await;
            }
            drop(permit);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_read_or_refused() {
        let os = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>();
        let a = parse(&os(&[
            "--socket", "/s", "--port", "9", "--", "sh", "-c", "x",
        ]))
        .expect("parses");
        assert_eq!(a.port, 9);
        assert_eq!(a.argv, os(&["sh", "-c", "x"]));
        assert!(parse(&os(&["--socket", "/s", "--port", "9", "--"])).is_err());
        assert!(
            parse(&os(&["--port", "x", "--", "sh"]))
                .expect_err("bad port")
                .contains("\"x\"")
        );
        assert!(parse(&os(&["--bogus"])).is_err());
    }
}

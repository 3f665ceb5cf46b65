//! Starting, probing and stopping the control plane's processes.
//!
//! Every process runs in its own process group with stdout and stderr appended to
//! `logs/<name>.log`, so it outlives the test binary that started it (the next test binary
//! reuses it) and `testenv down` can stop it and anything it spawned.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// One process to start.
#[derive(Debug)]
pub struct Spec {
    pub name: &'static str,
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(&'static str, String)>,
}

/// Starts `spec` in a new process group and returns its pid.
pub fn spawn(spec: &Spec, log_dir: &Path) -> Result<u32> {
    let log_path = log_dir.join(format!("{}.log", spec.name));
    let mut log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    writeln!(
        log,
        "# testenv: {} {}",
        spec.program.display(),
        spec.args.join(" ")
    )?;
    let mut cmd = Command::new(&spec.program);
    cmd.args(&spec.args)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        // Webhook calls and client traffic stay on loopback even where the machine
        // configures an HTTP proxy.
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env("no_proxy", "127.0.0.1,localhost")
        .env_remove("HTTPS_PROXY")
        .env_remove("https_proxy")
        .env_remove("HTTP_PROXY")
        .env_remove("http_proxy");
    for (k, v) in &spec.env {
        cmd.env(k, v);
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("starting {} ({})", spec.name, spec.program.display()))?;
    Ok(child.id())
}

/// Whether a process with this pid exists (and is not a zombie we could reap).
pub fn alive(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    // Reap it if it is our own exited child, so it does not linger as a zombie that
    // kill(pid, 0) would still report.
    // SAFETY: waitpid with WNOHANG on a specific pid has no memory-safety preconditions.
    let mut status = 0;
    let reaped = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
    if reaped == pid {
        return false;
    }
    // SAFETY: signal 0 only checks for existence and permission.
    unsafe { libc::kill(pid, 0) == 0 }
}

/// Stops a process group: SIGTERM, then SIGKILL after `grace`.
pub fn stop_group(pid: u32, grace: Duration) {
    let Ok(pgid) = i32::try_from(pid) else {
        return;
    };
    // SAFETY: sending a signal to a process group we created.
    unsafe { libc::kill(-pgid, libc::SIGTERM) };
    let deadline = Instant::now() + grace;
    while alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    // SAFETY: as above; harmless if the group is already gone.
    unsafe { libc::kill(-pgid, libc::SIGKILL) };
}

/// The last `lines` lines of a log file, for failure reports.
pub fn tail(path: &Path, lines: usize) -> String {
    let Ok(mut f) = File::open(path) else {
        return format!("(no log at {})", path.display());
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(64 * 1024);
    let mut buf = String::new();
    if f.seek(SeekFrom::Start(start)).is_err() || f.read_to_string(&mut buf).is_err() {
        return format!("(unreadable log at {})", path.display());
    }
    let all: Vec<&str> = buf.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Plain HTTP GET of `path` on a loopback health endpoint; true on a 200 answer.
pub fn http_ok(addr: SocketAddr, path: &str) -> bool {
    let attempt = || -> std::io::Result<bool> {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        write!(
            s,
            "GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )?;
        let mut head = [0u8; 12];
        s.read_exact(&mut head)?;
        Ok(head.starts_with(b"HTTP/1.") && &head[9..12] == b"200")
    };
    attempt().unwrap_or(false)
}

/// Waits until `ready()` holds, failing early when the process `pid` has exited.
pub fn wait_until(
    what: &str,
    pid: u32,
    timeout: Duration,
    mut ready: impl FnMut() -> bool,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if ready() {
            return Ok(());
        }
        if !alive(pid) {
            bail!("{what} exited before it became ready");
        }
        if Instant::now() > deadline {
            bail!("{what} was not ready within {}s", timeout.as_secs());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

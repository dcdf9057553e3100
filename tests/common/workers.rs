//! OS worker processes for the multi-process tests: the test binary re-runs itself with
//! `--exact <entry> --nocapture`, and the entry test (inert unless `NIFTY_WORKER` is set) does the
//! worker's part. The parent drives a worker through its stdin, one command a line, and reads its
//! answers from its stdout: lines `WORKER <answer>` (libtest's own output around them is ignored).
//! Waiting for an answer is waiting for an event, never a sleep.
#![allow(dead_code, reason = "each test target uses a different subset")]

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};

/// The marker of a worker's answer lines.
const MARK: &str = "WORKER ";

/// A worker process of this test binary.
pub struct Worker {
    child: Child,
    stdin: Option<ChildStdin>,
    /// Shared so that `next` can wait for a line on tokio's blocking pool.
    lines: Arc<Mutex<mpsc::Receiver<String>>>,
}

impl Worker {
    /// Runs the test `entry` of this binary as a worker in `mode`, with `env` added.
    pub fn spawn(entry: &str, mode: &str, env: &[(&str, String)]) -> Worker {
        let mut command = Command::new(std::env::current_exe().unwrap());
        command
            .args(["--exact", entry, "--nocapture", "--test-threads=1"])
            .env("NIFTY_WORKER", mode)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        for (name, value) in env {
            command.env(name, value);
        }
        let mut child = command.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(at) = line.find(MARK) {
                    if tx.send(line[at + MARK.len()..].to_owned()).is_err() {
                        break;
                    }
                }
            }
        });
        Worker {
            stdin: child.stdin.take(),
            child,
            lines: Arc::new(Mutex::new(lines)),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends one command line.
    pub fn send(&mut self, command: &str) {
        let stdin = self.stdin.as_mut().expect("worker stdin closed");
        writeln!(stdin, "{command}").unwrap();
        stdin.flush().unwrap();
    }

    /// The next answer line (blocks until it comes; panics if the worker exited without one).
    pub fn answer(&mut self) -> String {
        let line = self.lines.lock().unwrap().recv();
        match line {
            Ok(line) => line,
            Err(_) => {
                let status = self.child.wait();
                panic!("worker {} exited without answering: {status:?}", self.pid())
            }
        }
    }

    /// The next answer, if one has come already.
    pub fn try_answer(&mut self) -> Option<String> {
        self.lines.lock().unwrap().try_recv().ok()
    }

    /// The next answer line, awaited on any runtime (the wait runs on tokio's blocking pool).
    pub async fn next(&mut self) -> String {
        let lines = Arc::clone(&self.lines);
        let line = tokio::task::spawn_blocking(move || lines.lock().unwrap().recv())
            .await
            .unwrap();
        match line {
            Ok(line) => line,
            Err(_) => {
                let status = self.child.wait();
                panic!("worker {} exited without answering: {status:?}", self.pid())
            }
        }
    }

    /// For a worker that answers once and exits: its answer, after it exited successfully.
    pub async fn result(mut self) -> String {
        self.stdin.take();
        let answer = self.next().await;
        tokio::task::spawn_blocking(move || self.finish())
            .await
            .unwrap();
        answer
    }

    /// The next answer, taken from inside a tokio multi-thread runtime.
    pub fn answer_async(&mut self) -> String {
        tokio::task::block_in_place(|| self.answer())
    }

    /// SIGKILLs the worker, reaps it and returns how it ended.
    pub fn killed(&mut self) -> std::process::ExitStatus {
        let _ = self.child.kill();
        self.child.wait().unwrap()
    }

    /// SIGKILLs the worker and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Closes its stdin (the worker's end-of-commands) and waits for it to exit successfully.
    pub fn finish(mut self) {
        self.stdin.take();
        let status = self.child.wait().unwrap();
        assert!(status.success(), "worker {} failed: {status:?}", self.pid());
    }

    /// The worker's resident set size in kB (`VmRSS` in `/proc/<pid>/status`).
    pub fn rss_kb(&self) -> Option<u64> {
        rss_kb(self.pid())
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The resident set size of process `pid` in kB, from `/proc/<pid>/status`.
pub fn rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// The worker side: the mode this process runs as a worker in, if it is one.
pub fn worker_mode() -> Option<String> {
    std::env::var("NIFTY_WORKER").ok()
}

/// The worker side: the runtime a worker runs on (two worker threads), with a `tracing` log to
/// stderr at `level` when the parent set `NIFTY_WORKER_TRACE`.
pub fn worker_runtime(level: tracing::Level) -> tokio::runtime::Runtime {
    if std::env::var_os("NIFTY_WORKER_TRACE").is_some() {
        tracing_subscriber::fmt()
            .with_max_level(level)
            .with_writer(std::io::stderr)
            .init();
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// The worker side: an environment variable the parent set.
pub fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set"))
}

/// The worker side: the parent's commands, one a line, until it closes stdin; read on a thread of
/// their own into a tokio channel.
pub fn commands() -> tokio::sync::mpsc::UnboundedReceiver<String> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// The worker side: answers the parent (one line, flushed).
pub fn answer(line: &str) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "\n{MARK}{line}").unwrap();
    out.flush().unwrap();
}

/// The count in a worker's `ok=<n>` answer (requests it saw served).
pub fn served(answer: &str) -> usize {
    answer
        .strip_prefix("ok=")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not a worker result: {answer:?}"))
}

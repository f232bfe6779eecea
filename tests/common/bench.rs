//! Helpers shared by the benchmarks.
#![allow(clippy::unwrap_used, clippy::expect_used)] // bench code: a panic is the failure report

use std::{
    io::Write,
    net::SocketAddr,
    path::Path,
    process::{Child, Command, Stdio},
};

use crate::git::GitUser;

/// Writes a history of `commits` commits into the repo at `dir` with `git
/// fast-import`: each commit rewrites one of 64 files with `bytes` of pseudo-random
/// text (which neither compresses nor deltas much, so the pack is about
/// `commits × bytes`).
pub fn generate(user: &GitUser, dir: &Path, commits: u64, bytes: usize) {
    let mut child = Command::new("git")
        .args(["fast-import", "--quiet"])
        .current_dir(dir)
        .env("HOME", user.home.path())
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = std::io::BufWriter::new(child.stdin.take().unwrap());
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut data = vec![0u8; bytes];
    for i in 0..commits {
        for b in data.iter_mut() {
            // xorshift64*, printable.
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            *b = b' ' + u8::try_from(state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 58).unwrap() + 32;
        }
        let time = 1_700_000_000 + i;
        write!(
            stdin,
            "commit refs/heads/main\ncommitter Bench <bench@example.com> {time} +0000\ndata <<EOF\ncommit {i}\nEOF\n"
        )
        .unwrap();
        write!(
            stdin,
            "M 644 inline file{:02}\ndata {}\n",
            i % 64,
            data.len()
        )
        .unwrap();
        stdin.write_all(&data).unwrap();
        stdin.write_all(b"\n").unwrap();
    }
    drop(stdin);
    assert!(child.wait().unwrap().success(), "fast-import failed");
    user.git_ok(dir, &["reset", "-q", "--hard", "main"]);
}

/// The median of `v`.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The `p` quantile (0..=1) of `v` (sorted in place), nearest rank.
pub fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i]
}

/// A child process killed when dropped.
pub struct Killed(pub Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A free loopback address.
pub fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// Peak resident memory of process `pid`, in MB.
pub fn peak_rss_mb(pid: u32) -> f64 {
    status_mb(pid, "VmHWM:")
}

/// Resident memory of process `pid` now, in MB.
pub fn rss_mb(pid: u32) -> f64 {
    status_mb(pid, "VmRSS:")
}

/// A `kB` field of `/proc/<pid>/status` (`VmRSS:`, `RssAnon:`, …), in MB.
pub fn status_mb(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb / 1024.0
}

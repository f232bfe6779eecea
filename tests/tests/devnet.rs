//! `hanzo-node devnet`, the README's main-job command, as a newcomer runs it: it comes
//! up, the commands it prints work as printed (a `hanzo://` clone, a signed push, a
//! replicated ref, a wallet sign-in and a gRPC call with buf), Ctrl-C stops it
//! cleanly, and a second run from the same data dir has the same state — as does a
//! third after the devnet was SIGKILLed.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use hanzo_e2e::*;

/// A free base port with the 24 ports three nodes use above it free too.
fn free_base() -> u16 {
    loop {
        let base = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if base < 65000
            && (base..base + 24).all(|p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok())
        {
            return base;
        }
    }
}

/// A running `hanzo-node devnet`, and the summary it printed.
struct Running {
    child: Child,
    summary: Vec<String>,
}

impl Running {
    /// Starts the devnet in `dir` and reads its output up to the last printed command.
    fn start(dir: &Path, chain_port: u16, base_port: u16) -> Self {
        let tools = [
            "node_modules/@foundry-rs/anvil-linux-amd64/bin",
            "node_modules/@bufbuild/buf-linux-x64/bin",
        ]
        .map(|d| repo_root().join(d).display().to_string());
        let mut child = Command::new(node_bin())
            .args([
                "--data-dir",
                dir.to_str().unwrap(),
                "devnet",
                "--chain-port",
            ])
            .arg(chain_port.to_string())
            .arg("--base-port")
            .arg(base_port.to_string())
            .arg("--model")
            .arg(hanzo_e2e::inference::real_model())
            .env_clear()
            .env("PATH", format!("{}:/usr/bin:/bin", tools.join(":")))
            .env("HOME", dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("hanzo-node devnet starts");
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                if tx.send(line.unwrap()).is_err() {
                    break;
                }
            }
        });
        let mut summary = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no complete summary; got {summary:#?}"));
            let end = line.contains("hanzo-node acl show");
            summary.push(line);
            if end {
                break;
            }
        }
        Self { child, summary }
    }

    /// The printed commands to try, as lines of a shell script.
    fn commands(&self) -> String {
        let start = self
            .summary
            .iter()
            .position(|l| l.starts_with("Try it"))
            .expect("a Try it section");
        self.summary[start + 1..]
            .iter()
            .map(|l| l.trim_start().to_owned() + "\n")
            .collect()
    }

    /// The `key 0x…` lines, one per node.
    fn node_keys(&self) -> Vec<String> {
        self.summary
            .iter()
            .filter_map(|l| l.trim().strip_prefix("node ").map(str::to_owned))
            .filter(|l| l.contains(" key 0x"))
            .collect()
    }

    /// Node `i`'s git URL, as printed.
    fn git_url(&self, i: usize) -> String {
        let keys = self
            .summary
            .iter()
            .position(|l| l.trim().starts_with(&format!("node {i}  key")))
            .unwrap();
        let line = &self.summary[keys + 1];
        line.split_whitespace().nth(1).unwrap().to_owned()
    }

    /// Ctrl-C: the devnet stops its nodes and anvil and exits 0.
    fn interrupt(mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "devnet exited with {status} after Ctrl-C");
                return;
            }
            assert!(
                Instant::now() < deadline,
                "devnet still running 60 s after Ctrl-C"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `script` with bash in `cwd` as a new user would: a bare PATH and an empty home.
fn run_script(script: &str, cwd: &Path) -> String {
    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c", script])
        .current_dir(cwd)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", cwd)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "the printed commands failed:\n{script}\n---\n{text}"
    );
    text
}

/// `git ls-remote <url> refs/heads/main`'s commit, if any.
fn remote_main(url: &str) -> Option<String> {
    let out = Command::new("git")
        .args(["ls-remote", url, "refs/heads/main"])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace().next().map(str::to_owned)
}

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Waits until every node serves `main` at `commit`.
fn converged(run: &Running, commit: &str) {
    for i in 0..3 {
        let url = format!("{}/demo.git", run.git_url(i));
        let deadline = Instant::now() + Duration::from_secs(60);
        while remote_main(&url).as_deref() != Some(commit) {
            assert!(
                Instant::now() < deadline,
                "node {i} ({url}) does not serve main at {commit}: {:?}",
                remote_main(&url)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

#[test]
fn devnet_comes_up_its_printed_commands_work_and_it_resumes_after_a_stop_or_a_kill() {
    let home = tempfile::tempdir().unwrap();
    let dir: PathBuf = home.path().join("devnet");
    let chain_port = free_base();
    // Free now, and not the chain's port: both are only probed, not held.
    let base_port = loop {
        let base = free_base();
        if !(base..base + 24).contains(&chain_port) {
            break base;
        }
    };

    // First run: set-up, then the summary.
    let run = Running::start(&dir, chain_port, base_port);
    let text = run.summary.join("\n");
    assert!(text.contains("hanzo devnet: 3 nodes up"), "{text}");
    assert!(!text.contains("not ready yet"), "{text}");
    let keys = run.node_keys();
    assert_eq!(keys.len(), 3, "{text}");

    // The printed commands, verbatim, from an empty directory.
    let work = home.path().join("first");
    std::fs::create_dir(&work).unwrap();
    let out = run_script(&run.commands(), &work);
    assert!(out.contains("* [new branch]      HEAD -> main"), "{out}");
    let pushed = git(&work.join("demo"), &["rev-parse", "HEAD"]);
    // The gRPC call: alice is served as a staked caller by node 0.
    assert!(out.contains("\"role\": \"ROLE_CALLER\""), "{out}");
    let node0 = keys[0].split_whitespace().last().unwrap();
    assert!(out.contains(&format!("\"nodeKey\": \"{node0}\"")), "{out}");
    assert!(out.contains("ready: ACL at block"), "{out}");
    // dig: node 0's git URL, from its DNS server, by its key.
    assert!(
        out.contains(&format!("\"url=http://127.0.0.1:{base_port}\"")),
        "{out}"
    );
    // The embeddings call: the real model, served by node 0.
    assert!(
        out.contains(r#""object":"embedding""#) && out.contains(r#""model":"all-MiniLM-L6-v2""#),
        "{out}"
    );
    // The push reached every node.
    converged(&run, &pushed);
    run.interrupt();
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", chain_port)).is_err(),
        "anvil still listens after Ctrl-C"
    );

    // Second run from the same data dir: the same nodes, repo and history.
    let run = Running::start(&dir, chain_port, base_port);
    let text = run.summary.join("\n");
    assert!(!text.contains("first run"), "{text}");
    assert_eq!(run.node_keys(), keys, "node keys changed across a restart");
    converged(&run, &pushed);
    let work = home.path().join("second");
    std::fs::create_dir(&work).unwrap();
    let out = run_script(&run.commands(), &work);
    let clone = work.join("demo");
    let second = git(&clone, &["rev-parse", "HEAD"]);
    assert_eq!(
        git(&clone, &["rev-parse", "HEAD~1"]),
        pushed,
        "the first push is the parent"
    );
    assert!(out.contains("HEAD -> main"), "{out}");
    converged(&run, &second);

    // SIGKILL: no clean stop, anvil left running. The next run stops that anvil (it
    // writes its state) and resumes with the second push on every node.
    drop(run);
    let run = Running::start(&dir, chain_port, base_port);
    assert_eq!(run.node_keys(), keys, "node keys changed across a kill");
    converged(&run, &second);
    run.interrupt();
}

//! A real Docker engine for the tests: one `dockerd` per test process on its own
//! socket, data and exec roots (under `/tmp/hanzo-test-dockerd`), stopped by its pid
//! when the test process exits (or, after a crash, by the next start), and a busybox
//! image made locally with `docker import` (no registry is reachable).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

/// The image the tests run: busybox's applets (`sh`, `httpd`, `sleep`, …).
pub const BUSYBOX: &str = "hanzo-test/busybox:1";
const ROOT: &str = "/tmp/hanzo-test-dockerd";

/// The engine of this test process.
#[derive(Debug)]
pub struct Engine {
    /// `unix://…/docker.sock`, for `DOCKER_HOST` and `[deploy] docker_host`.
    pub host: String,
}

impl Engine {
    /// `docker <args>` against this engine; its output, or a panic with its stderr.
    pub fn docker(&self, args: &[&str]) -> String {
        let out = Command::new("docker")
            .args(args)
            .env("DOCKER_HOST", &self.host)
            .output()
            .expect("run docker");
        assert!(
            out.status.success(),
            "docker {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Names of the containers that run (or exist, with `all`), sorted.
    pub fn containers(&self, all: bool) -> Vec<String> {
        self.containers_where(all, None)
    }

    /// Names of node `node`'s containers (its `hanzo.node` label: the first 8 bytes of
    /// its key in hex) that run, or exist with `all`, sorted. Tests sharing the engine
    /// see only their own.
    pub fn containers_of(&self, node: &str, all: bool) -> Vec<String> {
        self.containers_where(all, Some(node))
    }

    fn containers_where(&self, all: bool, node: Option<&str>) -> Vec<String> {
        let filter = node.map(|n| format!("label=hanzo.node={n}"));
        let mut args = vec!["ps", "--format", "{{.Names}}"];
        if all {
            args.push("--all");
        }
        if let Some(f) = &filter {
            args.extend(["--filter", f.as_str()]);
        }
        let mut names: Vec<String> = self.docker(&args).lines().map(str::to_owned).collect();
        names.sort();
        names
    }
}

fn fail(why: impl std::fmt::Display) -> ! {
    panic!(
        "the Docker tests need a Docker engine and could not start one: {why}. `scripts/setup` installs Debian's docker.io and busybox-static; the tests run dockerd as root"
    )
}

/// This process's engine, started on first use. A missing engine fails the test with
/// the reason; it never skips.
pub fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(start)
}

fn pid_in(file: &Path) -> Option<i32> {
    std::fs::read_to_string(file).ok()?.trim().parse().ok()
}

fn start() -> Engine {
    for tool in ["dockerd", "docker", "busybox"] {
        if which(tool).is_none() {
            fail(format!("`{tool}` is not on PATH"));
        }
    }
    let root = PathBuf::from(ROOT);
    let pidfile = root.join("dockerd.pid");
    // An engine a crashed test run left behind goes first.
    if let Some(pid) = pid_in(&pidfile) {
        let _ = Command::new("kill").arg(pid.to_string()).status();
        let until = Instant::now() + Duration::from_secs(20);
        while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    std::fs::create_dir_all(&root).unwrap();
    let sock = root.join("docker.sock");
    let _ = std::fs::remove_file(&sock);
    let log = std::fs::File::create(root.join("dockerd.log")).unwrap();
    let mut child = Command::new("dockerd")
        .arg("--host")
        .arg(format!("unix://{}", sock.display()))
        .arg("--data-root")
        .arg(root.join("data"))
        .arg("--exec-root")
        .arg(root.join("exec"))
        .arg("--pidfile")
        .arg(&pidfile)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| fail(format!("cannot run dockerd: {e}")));
    // dockerd outlives a test process that panics; a watcher stops it by pid once this
    // process is gone.
    let watcher = format!(
        "while kill -0 {me} 2>/dev/null; do sleep 1; done; kill {d}",
        me = std::process::id(),
        d = child.id()
    );
    let mut watcher = Command::new("setsid")
        .args(["sh", "-c", &watcher])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Reaped in the background, for as long as this process lives.
    std::thread::spawn(move || {
        let _ = child.wait();
        let _ = watcher.wait();
    });
    let engine = Engine {
        host: format!("unix://{}", sock.display()),
    };
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let ok = Command::new("docker")
            .args(["version", "--format", "{{.Server.Version}}"])
            .env("DOCKER_HOST", &engine.host)
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            break;
        }
        if Instant::now() > until {
            let log = std::fs::read_to_string(root.join("dockerd.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            fail(format!(
                "dockerd did not answer within 60 s; its log ends: {tail:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // Leftovers of an earlier run of the tests.
    let old = engine.containers(true);
    if !old.is_empty() {
        let mut args = vec!["rm", "--force"];
        args.extend(old.iter().map(String::as_str));
        engine.docker(&args);
    }
    engine.docker(&["volume", "prune", "--force"]);
    engine.docker(&["network", "prune", "--force"]);
    import_busybox(&engine);
    engine
}

fn which(tool: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

/// `hanzo-test/busybox:1`: a root with busybox and its applets' links.
fn import_busybox(engine: &Engine) {
    let have = Command::new("docker")
        .args(["image", "inspect", BUSYBOX])
        .env("DOCKER_HOST", &engine.host)
        .output()
        .is_ok_and(|o| o.status.success());
    if have {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    for d in ["tmp", "www", "data", "etc"] {
        std::fs::create_dir_all(dir.path().join(d)).unwrap();
    }
    std::fs::copy(which("busybox").unwrap(), bin.join("busybox")).unwrap();
    let applets = Command::new(bin.join("busybox"))
        .arg("--list")
        .output()
        .unwrap();
    for applet in String::from_utf8_lossy(&applets.stdout).lines() {
        if applet != "busybox" {
            std::os::unix::fs::symlink("busybox", bin.join(applet)).unwrap();
        }
    }
    let mut tar = Command::new("tar")
        .arg("-C")
        .arg(dir.path())
        .args(["-c", "."])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let status = Command::new("docker")
        .args(["import", "--change", "CMD [\"sh\"]", "-", BUSYBOX])
        .env("DOCKER_HOST", &engine.host)
        .stdin(tar.stdout.take().unwrap())
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(
        tar.wait().unwrap().success(),
        "tar of the busybox root failed"
    );
    assert!(status.success(), "docker import of busybox failed");
}

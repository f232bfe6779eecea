//! How the process runtime starts a workload: joined to its control group, under its
//! rlimits, in a session of its own, inside bubblewrap (`bwrap`, the sandbox Flatpak
//! uses) with its own mount, pid, ipc, uts and — unless `[deploy] network = "host"` —
//! network namespaces, as an unprivileged user with no capabilities. It sees `/usr`
//! (and the `/bin`, `/lib` links into it) and a few files of `/etc` read-only, a fresh
//! `/proc`, `/dev` and `/tmp`, and its own work dir at `/work`: nothing of the node's
//! data dir.
//!
//! A node running as root runs bwrap as root (it can then bind a work dir inside a
//! data dir only root may enter) and the workload drops to `[deploy] sandbox_uid` on
//! the host inside the namespaces (`setpriv`: no capabilities, no new privileges). A
//! node running as a user runs bwrap in a user namespace instead; the workload is uid
//! 65534 inside it and the node's uid outside.
//!
//! The command line is built here and nowhere else; the tools it chains are
//! util-linux's (`setsid`, `prlimit`, `setpriv`) and bubblewrap.

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    process::Stdio,
};

use tokio::process::Command;
use tracing::{info, warn};

use super::{
    Error,
    cgroup::{Cgroup, Cgroups, Limits},
    spec::Mount,
};
use crate::config::{DeployConfig, WorkloadNetwork};

/// `PATH` inside the sandbox.
pub const SANDBOX_PATH: &str = "/usr/local/bin:/usr/bin:/bin";
/// Where the work dir appears inside the sandbox.
pub const WORK: &str = "/work";
/// Joins the control groups named in `$2…` (`$1` of them), then runs the rest.
const JOIN_SCRIPT: &str = r#"n=$1; shift; while [ "$n" -gt 0 ]; do echo $$ > "$1" || exit 125; shift; n=$((n-1)); done; exec "$@""#;
/// Linked or bound read-only from the host, where they exist.
const SYSTEM_DIRS: [&str; 6] = ["/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"];
const ETC_FILES: [&str; 9] = [
    "/etc/alternatives",
    "/etc/ssl",
    "/etc/ca-certificates",
    "/etc/ld.so.cache",
    "/etc/localtime",
    "/etc/nsswitch.conf",
    "/etc/hosts",
    "/etc/resolv.conf",
    "/etc/mime.types",
];

/// How workloads are confined; built once when the runtime opens.
#[derive(Debug)]
pub struct Sandbox {
    /// `None`: `[deploy] insecure_no_sandbox`.
    bwrap: Option<Bwrap>,
    /// `None`: limits are rlimits.
    cgroups: Option<Cgroups>,
}

#[derive(Debug)]
struct Bwrap {
    /// The uid (and gid) workloads run as on the host, when the node is root and can
    /// drop to it; otherwise they keep the node's uid outside their namespace.
    drop_to: Option<u32>,
    network: WorkloadNetwork,
    /// The system part of bwrap's arguments.
    system: Vec<OsString>,
}

fn missing(tool: &str, package: &str) -> Error {
    Error::Unsupported(format!(
        "the process runtime sandboxes workloads with `{tool}`, which is not on the node's PATH; install it (Debian: `apt-get install {package}`), or use `[deploy] runtime = \"docker\"`"
    ))
}

impl Sandbox {
    /// Checks that workloads can be confined here and how limits are enforced; a node
    /// whose process runtime cannot sandbox refuses to start with the fix.
    pub async fn new(config: &DeployConfig, scratch: &Path) -> Result<Self, Error> {
        let cgroups = match Cgroups::probe() {
            Ok(c) => Some(c),
            Err(why) => {
                warn!(target: super::TARGET, %why, "limits on workloads fall back to rlimits (address space, processes per uid, open files; no CPU limit)");
                None
            }
        };
        for (tool, package) in [
            ("setsid", "util-linux"),
            ("prlimit", "util-linux"),
            ("nsenter", "util-linux"),
        ] {
            which(tool, &host_path()).ok_or_else(|| missing(tool, package))?;
        }
        if config.insecure_no_sandbox {
            warn!(target: super::TARGET, "[deploy] insecure_no_sandbox = true: workloads run as the node's own user and see the host's whole filesystem, node key and keystore included");
            return Ok(Self {
                bwrap: None,
                cgroups,
            });
        }
        which("bwrap", &host_path()).ok_or_else(|| missing("bwrap", "bubblewrap"))?;
        let root = nix::unistd::Uid::effective().is_root();
        if root && which("setpriv", SANDBOX_PATH).is_none() {
            return Err(missing("setpriv", "util-linux"));
        }
        let sandbox = Self {
            bwrap: Some(Bwrap {
                drop_to: root.then_some(config.sandbox_uid),
                network: config.network,
                system: system_args(),
            }),
            cgroups,
        };
        sandbox.trial(scratch).await?;
        info!(target: super::TARGET, uid = ?sandbox.bwrap.as_ref().and_then(|b| b.drop_to), network = ?config.network, cgroups = ?sandbox.cgroups, "workloads run in a bubblewrap sandbox");
        Ok(sandbox)
    }

    /// Runs `true` in a sandbox over `scratch`.
    async fn trial(&self, scratch: &Path) -> Result<(), Error> {
        let io = |what: &str, source| Error::Io {
            what: format!("{what} {}", scratch.display()),
            source,
        };
        std::fs::create_dir_all(scratch).map_err(|e| io("create", e))?;
        self.own(scratch).map_err(|e| io("chown", e))?;
        let limits = Limits {
            memory_bytes: 0,
            pids: 64,
            open_files: 64,
            cpu_millis: 0,
        };
        let out = self
            .command(scratch, &[], None, None, &limits, "true", &[])
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(|e| io("run a sandbox trial in", e))?;
        let _ = std::fs::remove_dir_all(scratch);
        if out.status.success() {
            return Ok(());
        }
        Err(Error::Unsupported(format!(
            "the process runtime cannot start a sandbox here ({}: {}); bubblewrap needs unprivileged user namespaces (`sysctl -w user.max_user_namespaces=15000`, and `kernel.unprivileged_userns_clone=1` or `kernel.apparmor_restrict_unprivileged_userns=0` where the kernel has them), or use `[deploy] runtime = \"docker\"`",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }

    /// Whether workloads are confined at all.
    pub fn enabled(&self) -> bool {
        self.bwrap.is_some()
    }

    /// The control groups, where limits are enforced by them.
    pub fn cgroups(&self) -> Option<&Cgroups> {
        self.cgroups.as_ref()
    }

    /// `PATH` the workload's programs are looked up in.
    pub fn path(&self) -> String {
        if self.enabled() {
            SANDBOX_PATH.to_owned()
        } else {
            host_path()
        }
    }

    /// The work dir as the workload sees it.
    pub fn work_dir<'a>(&self, dir: &'a Path) -> &'a Path {
        if self.enabled() { Path::new(WORK) } else { dir }
    }

    /// Gives `dir` to the uid workloads run as, so they can write it.
    pub fn own(&self, dir: &Path) -> std::io::Result<()> {
        match self.bwrap.as_ref().and_then(|b| b.drop_to) {
            Some(uid) => std::os::unix::fs::chown(dir, Some(uid), Some(uid)),
            None => Ok(()),
        }
    }

    /// `program args` confined to `dir` (with `volumes` bound at their targets) in a
    /// new sandbox — or, with `enter`, inside the running sandbox whose namespace init
    /// is `enter`, seeing what its replica sees — in `cgroup` (or under rlimits without
    /// one), in a new session whose id is the returned child's pid. Environment, stdio
    /// and the rest are the caller's to set.
    #[allow(clippy::too_many_arguments)] // one command line, built in one place
    pub fn command(
        &self,
        dir: &Path,
        volumes: &[(PathBuf, &Mount)],
        enter: Option<u32>,
        cgroup: Option<&Cgroup>,
        limits: &Limits,
        program: &str,
        args: &[String],
    ) -> Command {
        let mut cmd = Command::new("sh");
        let procs = cgroup.map(Cgroup::procs_files).unwrap_or_default();
        cmd.args(["-c", JOIN_SCRIPT, "hanzo-sandbox"])
            .arg(procs.len().to_string())
            .args(&procs)
            // A session of its own: no controlling terminal of the node's, and a
            // process group the node signals as a whole.
            .arg("setsid")
            .arg("prlimit")
            .arg(format!("--nofile={0}:{0}", limits.open_files));
        if cgroup.is_none() {
            // Without cgroups: address space for memory; processes count per uid.
            if limits.memory_bytes > 0 {
                cmd.arg(format!("--as={0}:{0}", limits.memory_bytes));
            }
            cmd.arg(format!("--nproc={0}:{0}", limits.pids));
        }
        cmd.arg("--");
        if let Some(b) = &self.bwrap {
            match enter {
                Some(init) => b.enter(&mut cmd, init),
                None => b.sandbox(&mut cmd, dir, volumes),
            }
            if let Some(uid) = b.drop_to {
                cmd.args([
                    "setpriv",
                    &format!("--reuid={uid}"),
                    &format!("--regid={uid}"),
                    "--clear-groups",
                    "--bounding-set=-all",
                    "--no-new-privs",
                ]);
            }
        }
        cmd.arg(program).args(args).current_dir(dir);
        cmd
    }
}

impl Bwrap {
    /// A new sandbox.
    fn sandbox(&self, cmd: &mut Command, dir: &Path, volumes: &[(PathBuf, &Mount)]) {
        cmd.arg("bwrap").arg("--die-with-parent");
        match self.drop_to {
            // As root, bwrap sets up the namespaces itself and the workload drops to
            // an unprivileged host uid inside them, with no capabilities left.
            Some(_) => cmd.args([
                "--unshare-pid",
                "--unshare-ipc",
                "--unshare-uts",
                "--unshare-cgroup-try",
            ]),
            // As a user, bwrap needs a user namespace, and denies the workload
            // further ones.
            None => cmd.args([
                "--unshare-all",
                "--share-net",
                "--unshare-user",
                "--disable-userns",
                "--uid",
                "65534",
                "--gid",
                "65534",
            ]),
        };
        if self.network == WorkloadNetwork::None {
            cmd.arg("--unshare-net");
        }
        cmd.args(["--hostname", "hanzo"])
            .args(&self.system)
            .args(["--proc", "/proc", "--dev", "/dev"])
            .args(["--perms", "1777", "--tmpfs", "/tmp"])
            .arg("--bind")
            .arg(dir)
            .arg(WORK);
        for (host, m) in volumes {
            cmd.arg(if m.read_only { "--ro-bind" } else { "--bind" })
                .arg(host)
                .arg(&m.target);
        }
        cmd.args(["--chdir", WORK, "--"]);
    }

    /// The namespaces of the sandbox whose init is `init` (its root and work dir too).
    fn enter(&self, cmd: &mut Command, init: u32) {
        cmd.args(["nsenter", "--target", &init.to_string()]);
        if self.drop_to.is_none() {
            // Into its user namespace, as its unprivileged user.
            cmd.args(["--user", "--setuid", "65534", "--setgid", "65534"]);
        }
        cmd.args([
            "--mount", "--uts", "--ipc", "--net", "--pid", "--root", "--wd", "--",
        ]);
    }
}

/// The init of the sandbox whose outer bwrap is `sid` (the inner bwrap: the pid
/// namespace's init), while the sandbox runs.
pub fn sandbox_init(sid: u32) -> Option<u32> {
    children(sid)
        .into_iter()
        .find(|&pid| Stat::read(pid).is_some_and(|s| s.comm == "bwrap"))
}

fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// The pids to ask to stop in session `sid`: all its processes but, when
/// `sandboxed`, the sandbox's own (bwrap outside and as the namespace's init), whose
/// death would kill the workload without its grace period.
pub fn workload_pids(sid: u32, sandboxed: bool) -> Vec<u32> {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| {
            let Some(stat) = Stat::read(pid) else {
                return false;
            };
            let ours = sandboxed && (pid == sid || (stat.ppid == sid && stat.comm == "bwrap"));
            stat.session == sid && !ours
        })
        .collect()
}

/// The fields of `/proc/<pid>/stat` the runtime reads.
#[derive(Debug)]
pub struct Stat {
    /// The program's name.
    pub comm: String,
    /// Parent pid.
    pub ppid: u32,
    /// Session id.
    pub session: u32,
    /// Start time in clock ticks since boot: tells a process from a later one with
    /// the same pid.
    pub start: u64,
}

impl Stat {
    /// Reads it; `None` when the process is gone.
    pub fn read(pid: u32) -> Option<Self> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let (head, tail) = stat.rsplit_once(')')?;
        let comm = head.split_once('(')?.1.to_owned();
        // After the name: state ppid pgrp session … (starttime is the 20th).
        let fields: Vec<&str> = tail.split_whitespace().collect();
        Some(Self {
            comm,
            ppid: fields.get(1)?.parse().ok()?,
            session: fields.get(3)?.parse().ok()?,
            start: fields.get(19)?.parse().ok()?,
        })
    }
}

fn system_args() -> Vec<OsString> {
    let mut args: Vec<OsString> = vec!["--ro-bind".into(), "/usr".into(), "/usr".into()];
    for dir in SYSTEM_DIRS {
        let path = Path::new(dir);
        match std::fs::read_link(path) {
            Ok(target) => args.extend(["--symlink".into(), target.into(), dir.into()]),
            Err(_) if path.is_dir() => args.extend(["--ro-bind".into(), dir.into(), dir.into()]),
            Err(_) => {}
        }
    }
    for file in ETC_FILES {
        args.extend(["--ro-bind-try".into(), file.into(), file.into()]);
    }
    args
}

/// The node's own `PATH`.
pub fn host_path() -> String {
    std::env::var("PATH").unwrap_or_else(|_| SANDBOX_PATH.to_owned())
}

/// `program` on `path`.
pub fn which(program: &str, path: &str) -> Option<PathBuf> {
    std::env::split_paths(path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_of_this_process_and_of_none() {
        let me = std::process::id();
        let s = Stat::read(me).unwrap();
        assert!(s.start > 0 && s.ppid > 0);
        assert!(Stat::read(u32::MAX).is_none());
    }
}

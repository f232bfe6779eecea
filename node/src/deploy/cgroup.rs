//! Per-replica limits in the kernel's control groups: memory, processes and CPU, in
//! cgroup v2 (one tree) or v1 (a tree per controller), whichever the host mounts at
//! `/sys/fs/cgroup` and lets the node write. After a replica exits, its group tells
//! which limit stopped it.

use std::path::{Path, PathBuf};

use tracing::debug;

const MOUNT: &str = "/sys/fs/cgroup";
/// The node's groups live under this name in each tree.
const BASE: &str = "hanzo-node";
/// A CPU limit is a quota of this period (µs).
const CPU_PERIOD_US: u64 = 100_000;

/// Limits on one replica (and the commands exec'd beside it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of memory; 0: none.
    pub memory_bytes: u64,
    /// Processes and threads.
    pub pids: u32,
    /// Open files per process.
    pub open_files: u32,
    /// Thousandths of a CPU; 0: none.
    pub cpu_millis: u32,
}

/// Which cgroup version the host gives the node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cgroups {
    /// One tree: `<mount>/hanzo-node/<name>`.
    V2(PathBuf),
    /// A tree per controller: `<mount>/<controller>/hanzo-node/<name>`.
    V1(PathBuf),
}

/// One replica's group, in every tree it needs.
#[derive(Debug)]
pub struct Cgroup {
    version: Cgroups,
    name: String,
}

fn write(path: &Path, value: &str) -> std::io::Result<()> {
    std::fs::write(path, value)
        .map_err(|e| std::io::Error::new(e.kind(), format!("write {}: {e}", path.display())))
}

fn mkdir(path: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(path)
        .map_err(|e| std::io::Error::new(e.kind(), format!("create {}: {e}", path.display())))
}

impl Cgroups {
    /// The version the host mounts, if the node can make groups in it: v2 with the
    /// memory, pids and cpu controllers delegated, or v1 with memory, pids and cpu
    /// trees. The reason when neither.
    pub fn probe() -> Result<Self, String> {
        Self::probe_at(Path::new(MOUNT))
    }

    fn probe_at(mount: &Path) -> Result<Self, String> {
        let v2 = mount.join("cgroup.controllers");
        let found = if v2.exists() {
            let controllers = std::fs::read_to_string(&v2).map_err(|e| e.to_string())?;
            let has = |c| controllers.split_whitespace().any(|x| x == c);
            if !["memory", "pids", "cpu"].into_iter().all(has) {
                return Err(format!(
                    "cgroup v2 at {} lacks the memory, pids or cpu controller (it has: {})",
                    mount.display(),
                    controllers.trim()
                ));
            }
            let base = mount.join(BASE);
            (|| {
                write(&mount.join("cgroup.subtree_control"), "+memory +pids +cpu")?;
                mkdir(&base)?;
                write(&base.join("cgroup.subtree_control"), "+memory +pids +cpu")
            })()
            .map_err(|e| e.to_string())?;
            Self::V2(mount.to_owned())
        } else if ["memory", "pids", "cpu"]
            .iter()
            .all(|c| mount.join(c).join("cgroup.procs").exists())
        {
            for c in ["memory", "pids", "cpu"] {
                mkdir(&mount.join(c).join(BASE)).map_err(|e| e.to_string())?;
            }
            Self::V1(mount.to_owned())
        } else {
            return Err(format!(
                "no cgroup v2 or v1 memory/pids/cpu trees at {}",
                mount.display()
            ));
        };
        Ok(found)
    }

    /// The group called `name` (made of letters, digits, `-` and `_`), made if need be,
    /// with `limits` written into it.
    pub fn create(&self, name: &str, limits: &Limits) -> std::io::Result<Cgroup> {
        let group = Cgroup {
            version: self.clone(),
            name: name.to_owned(),
        };
        for dir in group.dirs() {
            mkdir(&dir)?;
        }
        let memory = match limits.memory_bytes {
            0 => None,
            n => Some(n.to_string()),
        };
        let cpu_quota = match limits.cpu_millis {
            0 => None,
            m => Some(u64::from(m) * CPU_PERIOD_US / 1000),
        };
        match &self.version_dirs(name) {
            Dirs::V2(dir) => {
                write(&dir.join("pids.max"), &limits.pids.to_string())?;
                write(&dir.join("memory.max"), memory.as_deref().unwrap_or("max"))?;
                if memory.is_some() {
                    // A replica over its limit is killed, not slowed down in swap.
                    let _ = write(&dir.join("memory.swap.max"), "0");
                }
                let cpu = cpu_quota.map_or_else(|| "max".to_owned(), |q| q.to_string());
                write(&dir.join("cpu.max"), &format!("{cpu} {CPU_PERIOD_US}"))?;
            }
            Dirs::V1 {
                memory: m,
                pids,
                cpu,
            } => {
                write(&pids.join("pids.max"), &limits.pids.to_string())?;
                write(
                    &m.join("memory.limit_in_bytes"),
                    memory.as_deref().unwrap_or("-1"),
                )?;
                if let Some(mem) = &memory {
                    let _ = write(&m.join("memory.memsw.limit_in_bytes"), mem);
                }
                write(&cpu.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
                let quota = cpu_quota.map_or_else(|| "-1".to_owned(), |q| q.to_string());
                write(&cpu.join("cpu.cfs_quota_us"), &quota)?;
            }
        }
        Ok(group)
    }

    fn version_dirs(&self, name: &str) -> Dirs {
        match self {
            Self::V2(mount) => Dirs::V2(mount.join(BASE).join(name)),
            Self::V1(mount) => {
                let at = |c: &str| mount.join(c).join(BASE).join(name);
                Dirs::V1 {
                    memory: at("memory"),
                    pids: at("pids"),
                    cpu: at("cpu"),
                }
            }
        }
    }

    /// Removes the groups whose names start with `prefix` (a previous run's, now
    /// empty); those still in use stay.
    pub fn remove_all(&self, prefix: &str) {
        let trees: Vec<PathBuf> = match self {
            Self::V2(mount) => vec![mount.join(BASE)],
            Self::V1(mount) => ["memory", "pids", "cpu"]
                .iter()
                .map(|c| mount.join(c).join(BASE))
                .collect(),
        };
        for tree in trees {
            let Ok(entries) = std::fs::read_dir(&tree) else {
                continue;
            };
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().starts_with(prefix) {
                    let _ = std::fs::remove_dir(e.path());
                }
            }
        }
    }
}

enum Dirs {
    V2(PathBuf),
    V1 {
        memory: PathBuf,
        pids: PathBuf,
        cpu: PathBuf,
    },
}

impl Cgroup {
    fn dirs(&self) -> Vec<PathBuf> {
        match self.version.version_dirs(&self.name) {
            Dirs::V2(d) => vec![d],
            Dirs::V1 { memory, pids, cpu } => vec![memory, pids, cpu],
        }
    }

    /// The `cgroup.procs` files a process writes its pid into to join.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs()
            .into_iter()
            .map(|d| d.join("cgroup.procs"))
            .collect()
    }

    /// Which limit the kernel enforced so far, for people: the memory limit (an OOM
    /// kill) and the process limit (forks refused).
    pub fn limits_hit(&self, limits: &Limits) -> Vec<String> {
        let count = |path: PathBuf, key: &str| -> u64 {
            std::fs::read_to_string(path)
                .unwrap_or_default()
                .lines()
                .find_map(|l| l.strip_prefix(key)?.trim().parse().ok())
                .unwrap_or(0)
        };
        let (oom, forks) = match self.version.version_dirs(&self.name) {
            Dirs::V2(d) => (
                count(d.join("memory.events"), "oom_kill "),
                count(d.join("pids.events"), "max "),
            ),
            Dirs::V1 { memory, pids, .. } => (
                count(memory.join("memory.oom_control"), "oom_kill "),
                count(pids.join("pids.events"), "max "),
            ),
        };
        let mut hit = Vec::new();
        if oom > 0 {
            hit.push(format!(
                "memory limit of {} MiB reached: the kernel killed {oom} process(es)",
                limits.memory_bytes >> 20
            ));
        }
        if forks > 0 {
            hit.push(format!(
                "process limit of {} reached: {forks} fork(s) refused",
                limits.pids
            ));
        }
        hit
    }

    /// Removes the group once its processes are gone (best effort: a group still in
    /// use by an exec stays until the deployment's next start or removal).
    pub fn remove(&self) {
        for dir in self.dirs() {
            if let Err(err) = std::fs::remove_dir(&dir)
                && err.kind() != std::io::ErrorKind::NotFound
            {
                debug!(target: super::TARGET, %err, dir = %dir.display(), "cgroup stays");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_without_cgroup_trees_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let err = Cgroups::probe_at(dir.path()).unwrap_err();
        assert!(err.contains("no cgroup v2 or v1"), "{err}");
    }

    #[test]
    fn v1_limits_and_their_reports() {
        // A v1 layout in a plain directory: the files the kernel would show.
        let dir = tempfile::tempdir().unwrap();
        for c in ["memory", "pids", "cpu"] {
            std::fs::create_dir_all(dir.path().join(c)).unwrap();
            std::fs::write(dir.path().join(c).join("cgroup.procs"), "").unwrap();
        }
        let cg = Cgroups::probe_at(dir.path()).unwrap();
        assert_eq!(cg, Cgroups::V1(dir.path().to_owned()));
        let limits = Limits {
            memory_bytes: 64 << 20,
            pids: 32,
            open_files: 256,
            cpu_millis: 500,
        };
        let g = cg.create("x-web-1", &limits).unwrap();
        let at = |c: &str, f: &str| dir.path().join(c).join(BASE).join("x-web-1").join(f);
        let read = |p: PathBuf| std::fs::read_to_string(p).unwrap();
        assert_eq!(read(at("memory", "memory.limit_in_bytes")), "67108864");
        assert_eq!(read(at("pids", "pids.max")), "32");
        assert_eq!(read(at("cpu", "cpu.cfs_quota_us")), "50000");
        assert!(g.limits_hit(&limits).is_empty());
        std::fs::write(
            at("memory", "memory.oom_control"),
            "under_oom 0\noom_kill 2\n",
        )
        .unwrap();
        std::fs::write(at("pids", "pids.events"), "max 7\n").unwrap();
        assert_eq!(
            g.limits_hit(&limits),
            [
                "memory limit of 64 MiB reached: the kernel killed 2 process(es)",
                "process limit of 32 reached: 7 fork(s) refused"
            ]
        );
        assert_eq!(g.procs_files().len(), 3);
    }
}

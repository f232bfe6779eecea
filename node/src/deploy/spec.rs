//! What a caller asks to run: a compose-like spec, checked before anything starts.

use std::{collections::BTreeMap, time::Duration};

use serde::{Deserialize, Serialize};

use super::Error;

/// Most services in one deployment.
pub const MAX_SERVICES: usize = 16;
/// Most replicas of one service.
pub const MAX_REPLICAS: u32 = 32;
const MAX_NAME: usize = 63;
const MAX_ARGS: usize = 256;
const MAX_ARG_BYTES: usize = 4096;
const MAX_ENV: usize = 256;
const MAX_ENV_VALUE: usize = 32 << 10;
const MAX_HEALTH_INTERVAL: u32 = 3600;

/// A deployment: named services, each a command run as replicas.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Spec {
    /// Unique among the caller's deployments; deploying it again replaces it.
    pub name: String,
    /// In the order given.
    pub services: Vec<ServiceSpec>,
    /// Networks its services may join beside `default` (docker runtime).
    pub networks: Vec<String>,
    /// Named volumes its services may mount; they belong to the caller and outlive
    /// the deployment.
    pub volumes: Vec<String>,
}

/// A container port published on the host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Port {
    /// On the host.
    pub host: u16,
    /// In the container.
    pub container: u16,
    /// UDP rather than TCP.
    pub udp: bool,
    /// The host address to bind; empty: the node's `[deploy] publish_address`.
    pub host_ip: String,
}

/// A named volume mounted into a service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    /// One of the deployment's volumes.
    pub volume: String,
    /// An absolute path in the container.
    pub target: String,
    /// Mounted read-only.
    pub read_only: bool,
}

/// Another service that has to be up first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dependency {
    /// Its name.
    pub service: String,
    /// Healthy (its health check passed), not only started.
    pub healthy: bool,
}

/// One service of a deployment.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceSpec {
    /// Unique within the deployment; replicas are `<name>-1`, `<name>-2`, …
    pub name: String,
    /// The program: a path, or a name looked up on `PATH`.
    pub command: String,
    /// Its arguments.
    pub args: Vec<String>,
    /// Environment beside the node-provided `PATH`, `HOME` and `HANZO_*`.
    pub env: BTreeMap<String, String>,
    /// Environment that is stored encrypted and never returned.
    pub secret_env: BTreeMap<String, String>,
    /// How many copies run.
    pub replicas: u32,
    /// What happens when a replica exits.
    pub restart: Restart,
    /// Run inside the replica's environment on an interval.
    pub health: Option<HealthCheck>,
    /// Limits.
    pub resources: Resources,
    /// Container image, for the docker runtime.
    pub image: String,
    /// Replaces the image's entrypoint (docker runtime); empty: the image's.
    pub entrypoint: Vec<String>,
    /// Ports published on the host (docker runtime).
    pub ports: Vec<Port>,
    /// Named volumes mounted.
    pub volumes: Vec<Mount>,
    /// Networks joined; empty: the deployment's `default` (docker runtime).
    pub networks: Vec<String>,
    /// Labels (docker runtime: on the container, beside the node's own `hanzo.*`).
    pub labels: BTreeMap<String, String>,
    /// Services that have to be up first.
    pub depends_on: Vec<Dependency>,
}

/// When a replica that exited is started again.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Restart {
    /// Never.
    No,
    /// When it exits with a code other than 0 or is unhealthy (the default).
    #[default]
    OnFailure,
    /// Whenever it exits.
    Always,
}

/// A command whose exit 0 means healthy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthCheck {
    /// Program and arguments.
    pub command: Vec<String>,
    /// Between checks.
    pub interval: Duration,
    /// A check running longer fails.
    pub timeout: Duration,
    /// Consecutive failures before the replica is unhealthy and restarted.
    pub retries: u32,
    /// Failures in this time after a start do not count.
    pub start_period: Duration,
}

/// Limits on one replica; zero means none.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    /// Bytes of memory (address space under the process runtime).
    pub memory_bytes: u64,
    /// Thousandths of a CPU.
    pub cpu_millis: u32,
}

impl Spec {
    /// Checks names, sizes and counts, so that nothing unbounded reaches a runtime.
    pub fn validate(&self) -> Result<(), Error> {
        name("deployment name", &self.name)?;
        if self.services.is_empty() || self.services.len() > MAX_SERVICES {
            return Err(invalid(format!(
                "a deployment has 1 to {MAX_SERVICES} services, `{}` has {}",
                self.name,
                self.services.len()
            )));
        }
        let mut seen = std::collections::BTreeSet::new();
        for s in &self.services {
            s.validate()?;
            if !seen.insert(s.name.as_str()) {
                return Err(invalid(format!("service `{}` is named twice", s.name)));
            }
        }
        for (what, names) in [("network", &self.networks), ("volume", &self.volumes)] {
            if names.len() > MAX_SERVICES {
                return Err(invalid(format!("at most {MAX_SERVICES} {what}s")));
            }
            for n in names {
                name(what, n)?;
            }
        }
        let mut host_ports = std::collections::BTreeSet::new();
        for s in &self.services {
            for n in &s.networks {
                if n != "default" && !self.networks.contains(n) {
                    return Err(invalid(format!(
                        "service `{}` joins network `{n}`, which the deployment does not declare (it has: default{})",
                        s.name,
                        self.networks
                            .iter()
                            .map(|n| format!(", {n}"))
                            .collect::<String>()
                    )));
                }
            }
            for m in &s.volumes {
                if !self.volumes.contains(&m.volume) {
                    return Err(invalid(format!(
                        "service `{}` mounts volume `{}`, which the deployment does not declare",
                        s.name, m.volume
                    )));
                }
            }
            for p in &s.ports {
                if !host_ports.insert((p.host, p.udp)) {
                    return Err(invalid(format!("host port {} is published twice", p.host)));
                }
            }
            for d in &s.depends_on {
                let Some(other) = self.service(&d.service).filter(|o| o.name != s.name) else {
                    return Err(invalid(format!(
                        "service `{}` depends on `{}`, which is not another service of the deployment",
                        s.name, d.service
                    )));
                };
                if d.healthy && other.health.is_none() {
                    return Err(invalid(format!(
                        "service `{}` waits for `{}` to be healthy, which has no health check",
                        s.name, d.service
                    )));
                }
            }
        }
        self.start_order().map(drop)
    }

    /// Services in an order that starts each after those it depends on.
    pub fn start_order(&self) -> Result<Vec<&ServiceSpec>, Error> {
        let mut order: Vec<&ServiceSpec> = Vec::with_capacity(self.services.len());
        while order.len() < self.services.len() {
            let ready = self.services.iter().find(|s| {
                !order.iter().any(|o| o.name == s.name)
                    && s.depends_on
                        .iter()
                        .all(|d| order.iter().any(|o| o.name == d.service))
            });
            match ready {
                Some(s) => order.push(s),
                None => {
                    return Err(invalid("services' depends_on form a cycle".to_owned()));
                }
            }
        }
        Ok(order)
    }

    /// The service called `name`.
    pub fn service(&self, name: &str) -> Option<&ServiceSpec> {
        self.services.iter().find(|s| s.name == name)
    }

    /// Replicas over all services.
    pub fn replicas(&self) -> u32 {
        self.services.iter().map(|s| s.replicas).sum()
    }
}

impl ServiceSpec {
    fn validate(&self) -> Result<(), Error> {
        name("service name", &self.name)?;
        let what = |field: &str| format!("service `{}`: {field}", self.name);
        if self.command.is_empty() && self.image.is_empty() {
            return Err(invalid(format!(
                "{} is empty (only a service with an image may leave it to the image)",
                what("command")
            )));
        }
        text(&what("command"), &self.command, MAX_ARG_BYTES)?;
        if self.args.len() > MAX_ARGS {
            return Err(invalid(format!(
                "{} has {} entries, at most {MAX_ARGS}",
                what("args"),
                self.args.len()
            )));
        }
        for a in &self.args {
            text(&what("an argument"), a, MAX_ARG_BYTES)?;
        }
        if self.env.len() + self.secret_env.len() > MAX_ENV {
            return Err(invalid(format!(
                "{} has more than {MAX_ENV} variables",
                what("env")
            )));
        }
        for (k, v) in self.env.iter().chain(&self.secret_env) {
            env_name(&what("env"), k)?;
            text(&what(&format!("env {k}")), v, MAX_ENV_VALUE)?;
        }
        if let Some(k) = self.env.keys().find(|k| self.secret_env.contains_key(*k)) {
            return Err(invalid(format!(
                "{} sets {k} both plainly and as a secret",
                what("env")
            )));
        }
        if self.replicas > MAX_REPLICAS {
            return Err(invalid(format!(
                "{} is {}, at most {MAX_REPLICAS}",
                what("replicas"),
                self.replicas
            )));
        }
        if let Some(h) = &self.health {
            if h.command.is_empty() || h.command.len() > MAX_ARGS {
                return Err(invalid(format!(
                    "{} needs 1 to {MAX_ARGS} words",
                    what("health check command")
                )));
            }
            for a in &h.command {
                text(&what("health check command"), a, MAX_ARG_BYTES)?;
            }
            let max = Duration::from_secs(MAX_HEALTH_INTERVAL.into());
            if h.interval.is_zero() || h.interval > max || h.timeout.is_zero() || h.timeout > max {
                return Err(invalid(format!(
                    "{}: interval and timeout are 1 s to {MAX_HEALTH_INTERVAL} s",
                    what("health check")
                )));
            }
        }
        let words = self.entrypoint.len() + self.labels.len() * 2;
        if words > MAX_ARGS {
            return Err(invalid(format!(
                "{} have more than {MAX_ARGS} words",
                what("entrypoint and labels")
            )));
        }
        for a in self
            .entrypoint
            .iter()
            .chain(self.labels.keys())
            .chain(self.labels.values())
        {
            text(&what("an entrypoint word or label"), a, MAX_ARG_BYTES)?;
        }
        if let Some(k) = self.labels.keys().find(|k| k.starts_with("hanzo.")) {
            return Err(invalid(format!(
                "{}: `{k}`: labels under `hanzo.` are the node's own",
                what("labels")
            )));
        }
        if self.ports.len() > MAX_SERVICES || self.volumes.len() > MAX_SERVICES {
            return Err(invalid(format!(
                "{} at most {MAX_SERVICES} ports and {MAX_SERVICES} volumes",
                what("has")
            )));
        }
        for p in &self.ports {
            if p.host == 0 || p.container == 0 {
                return Err(invalid(format!(
                    "{} needs host and container ports 1 to 65535",
                    what("ports")
                )));
            }
            if !p.host_ip.is_empty() && p.host_ip.parse::<std::net::IpAddr>().is_err() {
                return Err(invalid(format!(
                    "{}: `{}` is not an IP address",
                    what("ports"),
                    p.host_ip
                )));
            }
        }
        for m in &self.volumes {
            let t = &m.target;
            if !t.starts_with('/') || t == "/" || t.split('/').any(|c| c == ".." || c == ".") {
                return Err(invalid(format!(
                    "{}: target `{t}` must be an absolute path other than `/`, without `.` or `..`",
                    what("volume")
                )));
            }
            text(&what("volume target"), t, MAX_ARG_BYTES)?;
        }
        if self.resources.memory_bytes != 0 && self.resources.memory_bytes < 1 << 20 {
            return Err(invalid(format!(
                "{} is {} bytes; give at least 1 MiB, or 0 for no limit",
                what("memory limit"),
                self.resources.memory_bytes
            )));
        }
        Ok(())
    }
}

fn invalid(msg: String) -> Error {
    Error::Invalid(msg)
}

/// A DNS-label-like name: 1–63 of `a-z 0-9 -`, starting with a letter or digit.
pub(super) fn check_name(what: &str, s: &str) -> Result<(), Error> {
    name(what, s)
}

fn name(what: &str, s: &str) -> Result<(), Error> {
    let ok = !s.is_empty()
        && s.len() <= MAX_NAME
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(invalid(format!(
            "{what} `{}` must be 1 to {MAX_NAME} of a-z, 0-9 and '-', not starting with '-'",
            s.chars().take(80).collect::<String>()
        )))
    }
}

fn env_name(what: &str, s: &str) -> Result<(), Error> {
    let mut bytes = s.bytes();
    let ok = s.len() <= 256
        && bytes
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(invalid(format!(
            "{what}: `{}` is not a variable name (letters, digits, '_'; not starting with a digit)",
            s.chars().take(80).collect::<String>()
        )))
    }
}

fn text(what: &str, s: &str, max: usize) -> Result<(), Error> {
    if s.len() > max {
        return Err(invalid(format!(
            "{what} is {} bytes, at most {max}",
            s.len()
        )));
    }
    if s.contains('\0') {
        return Err(invalid(format!("{what} contains a NUL byte")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn service(name: &str) -> ServiceSpec {
        ServiceSpec {
            name: name.into(),
            command: "sh".into(),
            args: vec!["-c".into(), "sleep 1".into()],
            replicas: 1,
            ..ServiceSpec::default()
        }
    }

    #[test]
    fn names_counts_and_sizes_are_checked() {
        let ok = Spec {
            name: "web-1".into(),
            services: vec![service("api"), service("worker")],
            networks: Vec::new(),
            volumes: Vec::new(),
        };
        ok.validate().unwrap();
        let refused = |f: &dyn Fn(&mut Spec), needle: &str| {
            let mut s = ok.clone();
            f(&mut s);
            let err = s.validate().unwrap_err().to_string();
            assert!(err.contains(needle), "{err} lacks {needle}");
        };
        refused(&|s| s.name = "Web".into(), "deployment name `Web`");
        refused(&|s| s.name = "-x".into(), "not starting with '-'");
        refused(&|s| s.services.clear(), "1 to 16 services");
        refused(&|s| s.services[1].name = "api".into(), "named twice");
        refused(&|s| s.services[0].command.clear(), "command is empty");
        refused(&|s| s.services[0].replicas = 33, "at most 32");
        refused(&|s| s.services[0].args = vec!["a\0".into()], "NUL");
        refused(
            &|s| s.services[0].args = vec!["x".repeat(5000)],
            "at most 4096",
        );
        refused(
            &|s| {
                s.services[0].env.insert("1X".into(), "v".into());
            },
            "not a variable name",
        );
        refused(
            &|s| {
                s.services[0].env.insert("K".into(), "v".into());
                s.services[0].secret_env.insert("K".into(), "w".into());
            },
            "both plainly and as a secret",
        );
        refused(
            &|s| s.services[0].resources.memory_bytes = 1000,
            "at least 1 MiB",
        );
        refused(
            &|s| {
                s.services[0].health = Some(HealthCheck {
                    command: vec!["true".into()],
                    interval: Duration::ZERO,
                    timeout: Duration::from_secs(1),
                    retries: 1,
                    start_period: Duration::ZERO,
                });
            },
            "interval and timeout",
        );
    }
}

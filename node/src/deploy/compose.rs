//! A `docker-compose.yml` (the Compose Specification's common subset) read into a
//! [`Spec`]. Pure: text in, spec or a refusal naming the key out. What the node does
//! not do — host bind mounts, `privileged`, `network_mode`, capabilities, devices,
//! keys it does not know — is refused with the reason, never ignored.

use std::{collections::BTreeMap, time::Duration};

use yaml_serde::{Mapping, Value};

use super::{
    Error,
    spec::{Dependency, HealthCheck, Mount, Port, Restart, ServiceSpec, Spec},
};

/// Largest compose file read.
pub const MAX_COMPOSE_BYTES: usize = 256 << 10;

/// Keys refused with a reason of their own.
const REFUSED: [(&str, &str); 16] = [
    ("privileged", "a workload never gets the host's privileges"),
    (
        "network_mode",
        "services join the deployment's own networks only",
    ),
    (
        "cap_add",
        "a workload gets no capabilities beyond the runtime's defaults",
    ),
    ("devices", "host devices are not passed to workloads"),
    ("pid", "a workload never shares the host's pid namespace"),
    ("ipc", "a workload never shares another's ipc namespace"),
    (
        "userns_mode",
        "a workload never shares the host's user namespace",
    ),
    (
        "security_opt",
        "a workload's security profile is the runtime's",
    ),
    ("cgroup_parent", "the node places workloads' control groups"),
    (
        "container_name",
        "the node names containers (`hanzo-<deployment>-<service>-<n>`)",
    ),
    (
        "build",
        "the node runs images it has or can pull; build and push the image first",
    ),
    ("extra_hosts", "not supported"),
    ("sysctls", "kernel settings are the host's"),
    ("volumes_from", "mount named volumes instead"),
    (
        "links",
        "services reach each other by name on their networks",
    ),
    (
        "external_links",
        "services reach each other by name on their networks",
    ),
];

fn refuse(path: &str, why: impl std::fmt::Display) -> Error {
    Error::Invalid(format!("compose: `{path}`: {why}"))
}

/// Reads `yaml` as a compose file; `name`, when given, names the deployment whatever
/// the file's top-level `name` says (as `docker compose -p` does).
pub fn parse(yaml: &str, name: Option<&str>) -> Result<Spec, Error> {
    if yaml.len() > MAX_COMPOSE_BYTES {
        return Err(Error::Invalid(format!(
            "compose: the file is {} bytes, at most {MAX_COMPOSE_BYTES}",
            yaml.len()
        )));
    }
    let mut doc: Value = yaml_serde::from_str(yaml)
        .map_err(|e| Error::Invalid(format!("compose: not YAML: {e}")))?;
    doc.apply_merge()
        .map_err(|e| Error::Invalid(format!("compose: {e}")))?;
    let Value::Mapping(top) = doc else {
        return Err(Error::Invalid(
            "compose: the file is not a compose file (its top level is not a mapping with `services`)".into(),
        ));
    };
    if !top.contains_key("services") {
        return Err(Error::Invalid(
            "compose: the file is not a compose file: it has no `services`".into(),
        ));
    }
    let mut spec = Spec {
        name: name.unwrap_or_default().to_owned(),
        services: Vec::new(),
        networks: Vec::new(),
        volumes: Vec::new(),
    };
    let mut services: Option<&Mapping> = None;
    for (k, v) in &top {
        let key = key_str("", k)?;
        match key {
            "services" => services = Some(mapping("services", v)?),
            "name" => {
                if name.is_none() {
                    spec.name = string("name", v)?;
                }
            }
            "version" => {} // obsolete in the Compose Specification; informative only
            "networks" => spec.networks = top_level_names("networks", v)?,
            "volumes" => spec.volumes = top_level_names("volumes", v)?,
            k if k.starts_with("x-") => {}
            other => {
                return Err(refuse(
                    other,
                    "not supported at the top level (supported: services, networks, volumes, name, version, x-*)",
                ));
            }
        }
    }
    let services = services.into_iter().flatten();
    if spec.name.is_empty() {
        return Err(Error::Invalid(
            "compose: the deployment needs a name: a top-level `name`, or one given with the file"
                .into(),
        ));
    }
    for (k, v) in services {
        let name = key_str("services", k)?;
        spec.services.push(service(name, v)?);
    }
    Ok(spec)
}

fn key_str<'a>(at: &str, k: &'a Value) -> Result<&'a str, Error> {
    k.as_str()
        .ok_or_else(|| refuse(at, format!("key {k:?} is not a string")))
}

fn mapping<'a>(path: &str, v: &'a Value) -> Result<&'a Mapping, Error> {
    v.as_mapping()
        .ok_or_else(|| refuse(path, "expected a mapping"))
}

/// Compose's interpolation, for a file read where no shell environment is: `$$` is a
/// literal `$` (as in compose); `$VAR` and `${VAR}` are refused, naming the variable.
fn interpolate(path: &str, s: &str) -> Result<String, Error> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        match after.chars().next() {
            Some('$') => {
                out.push('$');
                rest = &after[1..];
            }
            Some(c) if c == '{' || c == '_' || c.is_ascii_alphabetic() => {
                let var: String = after
                    .trim_start_matches('{')
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                return Err(refuse(
                    path,
                    format!(
                        "`${var}` would be interpolated from a shell environment, which the node does not have: substitute it before sending, or write `$${var}` for the container's own variable"
                    ),
                ));
            }
            _ => {
                out.push('$');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    Ok(out)
}

fn string(path: &str, v: &Value) -> Result<String, Error> {
    match v {
        Value::String(s) => interpolate(path, s),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        _ => Err(refuse(path, "expected a string")),
    }
}

fn strings(path: &str, v: &Value) -> Result<Vec<String>, Error> {
    match v {
        Value::Sequence(items) => items.iter().map(|i| string(path, i)).collect(),
        _ => Err(refuse(path, "expected a list of strings")),
    }
}

/// A command as a list, or a string split as a shell would split words.
fn words(path: &str, v: &Value) -> Result<Vec<String>, Error> {
    match v {
        Value::String(s) => {
            split_words(&interpolate(path, s)?).ok_or_else(|| refuse(path, "unbalanced quotes"))
        }
        Value::Null => Ok(Vec::new()),
        _ => strings(path, v),
    }
}

/// Names declared at the top level (`networks:`/`volumes:`); their options must be
/// empty, as the node chooses drivers.
fn top_level_names(path: &str, v: &Value) -> Result<Vec<String>, Error> {
    let Value::Mapping(m) = v else {
        return Err(refuse(path, "expected a mapping of names"));
    };
    let mut names = Vec::new();
    for (k, opts) in m {
        let name = key_str(path, k)?;
        if let Value::Mapping(o) = opts
            && let Some((k, _)) = o.iter().next()
        {
            let k = k.as_str().unwrap_or("?");
            return Err(refuse(
                &format!("{path}.{name}.{k}"),
                "options are not supported: the node chooses drivers, and external resources are refused",
            ));
        }
        names.push(name.to_owned());
    }
    Ok(names)
}

/// `KEY: value` pairs from a mapping or a list of `KEY=value`.
fn pairs(path: &str, v: &Value) -> Result<BTreeMap<String, String>, Error> {
    let mut out = BTreeMap::new();
    match v {
        Value::Mapping(m) => {
            for (k, v) in m {
                let k = key_str(path, k)?;
                let value = match v {
                    Value::Null => String::new(),
                    v => string(&format!("{path}.{k}"), v)?,
                };
                out.insert(k.to_owned(), value);
            }
        }
        Value::Sequence(items) => {
            for item in items {
                let item = string(path, item)?;
                let Some((k, v)) = item.split_once('=') else {
                    return Err(refuse(
                        path,
                        format!(
                            "`{item}` has no value; the node has no shell environment to take it from, write `{item}=value`"
                        ),
                    ));
                };
                out.insert(k.to_owned(), v.to_owned());
            }
        }
        _ => return Err(refuse(path, "expected a mapping or a list of KEY=value")),
    }
    Ok(out)
}

fn service(name: &str, v: &Value) -> Result<ServiceSpec, Error> {
    let at = |k: &str| format!("services.{name}.{k}");
    let mut s = ServiceSpec {
        name: name.to_owned(),
        replicas: 1,
        restart: Restart::No,
        ..ServiceSpec::default()
    };
    for (k, v) in mapping(&format!("services.{name}"), v)? {
        let key = key_str(&format!("services.{name}"), k)?;
        let path = at(key);
        match key {
            "image" => s.image = string(&path, v)?,
            "command" => {
                let mut w = words(&path, v)?.into_iter();
                s.command = w.next().unwrap_or_default();
                s.args = w.collect();
            }
            "entrypoint" => s.entrypoint = words(&path, v)?,
            "environment" => s.env = pairs(&path, v)?,
            "labels" => s.labels = pairs(&path, v)?,
            "ports" => {
                let Value::Sequence(items) = v else {
                    return Err(refuse(&path, "expected a list"));
                };
                for p in items {
                    s.ports.push(port(&path, p)?);
                }
            }
            "volumes" => {
                let Value::Sequence(items) = v else {
                    return Err(refuse(&path, "expected a list"));
                };
                for m in items {
                    s.volumes.push(mount(&path, m)?);
                }
            }
            "networks" => {
                s.networks = match v {
                    Value::Sequence(_) => strings(&path, v)?,
                    Value::Mapping(m) => m
                        .iter()
                        .map(|(k, opts)| {
                            let n = key_str(&path, k)?;
                            match opts {
                                Value::Null => Ok(n.to_owned()),
                                _ => Err(refuse(
                                    &format!("{path}.{n}"),
                                    "per-network options are not supported; services reach each other by service name",
                                )),
                            }
                        })
                        .collect::<Result<_, _>>()?,
                    _ => return Err(refuse(&path, "expected a list or mapping of networks")),
                };
            }
            "healthcheck" => s.health = healthcheck(&path, v)?,
            "restart" => {
                s.restart = match string(&path, v)?.as_str() {
                    "no" => Restart::No,
                    "always" | "unless-stopped" => Restart::Always,
                    "on-failure" => Restart::OnFailure,
                    other => {
                        return Err(refuse(
                            &path,
                            format!("`{other}` is not no, always, on-failure or unless-stopped"),
                        ));
                    }
                }
            }
            "depends_on" => s.depends_on = depends_on(&path, v)?,
            "deploy" => deploy(&path, v, &mut s)?,
            k if k.starts_with("x-") => {}
            other => {
                let why = REFUSED
                    .iter()
                    .find(|(k, _)| *k == other)
                    .map_or("not supported by hanzo-node (supported: image, command, entrypoint, environment, ports, volumes, networks, healthcheck, restart, depends_on, deploy, labels, x-*)", |(_, why)| why);
                return Err(refuse(&path, why));
            }
        }
    }
    Ok(s)
}

fn port_number(path: &str, s: &str) -> Result<u16, Error> {
    s.parse::<u16>()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| refuse(path, format!("`{s}` is not a port number (1 to 65535)")))
}

fn port(path: &str, v: &Value) -> Result<Port, Error> {
    if let Value::Mapping(m) = v {
        let mut p = Port {
            host: 0,
            container: 0,
            udp: false,
            host_ip: String::new(),
        };
        for (k, v) in m {
            let k = key_str(path, k)?;
            let at = format!("{path}.{k}");
            match k {
                "target" => p.container = port_number(&at, &string(&at, v)?)?,
                "published" => p.host = port_number(&at, &string(&at, v)?)?,
                "protocol" => p.udp = protocol(&at, &string(&at, v)?)?,
                "host_ip" => p.host_ip = string(&at, v)?,
                "mode" if string(&at, v)? == "host" => {}
                _ => {
                    return Err(refuse(
                        &at,
                        "not supported (supported: target, published, protocol, host_ip)",
                    ));
                }
            }
        }
        if p.host == 0 || p.container == 0 {
            return Err(refuse(
                path,
                "a published port needs `published` and `target`",
            ));
        }
        return Ok(p);
    }
    let text = string(path, v)?;
    let (rest, udp) = match text.rsplit_once('/') {
        Some((r, proto)) => (r, protocol(path, proto)?),
        None => (text.as_str(), false),
    };
    // [host_ip:]host:container; an IPv6 host address is in brackets.
    let (ip, ports) = match rest.strip_prefix('[') {
        Some(r) => {
            let (ip, ports) = r
                .split_once("]:")
                .ok_or_else(|| refuse(path, format!("`{text}` is not [ip]:host:container")))?;
            (ip.to_owned(), ports)
        }
        None => match rest.matches(':').count() {
            2 => {
                let (ip, ports) = rest.split_once(':').unwrap_or_default();
                (ip.to_owned(), ports)
            }
            _ => (String::new(), rest),
        },
    };
    let Some((host, container)) = ports.split_once(':') else {
        return Err(refuse(
            path,
            format!("`{text}` publishes no host port; write host:container, e.g. `8080:{ports}`"),
        ));
    };
    if host.contains('-') || container.contains('-') {
        return Err(refuse(
            path,
            format!("`{text}`: port ranges are not supported"),
        ));
    }
    Ok(Port {
        host: port_number(path, host)?,
        container: port_number(path, container)?,
        udp,
        host_ip: ip,
    })
}

fn protocol(path: &str, p: &str) -> Result<bool, Error> {
    match p {
        "tcp" => Ok(false),
        "udp" => Ok(true),
        other => Err(refuse(
            path,
            format!("protocol `{other}` is not tcp or udp"),
        )),
    }
}

const BIND_REFUSED: &str = "host bind mounts are refused: a workload never reaches the operator's files; declare a named volume under the top-level `volumes` and mount it";

fn mount(path: &str, v: &Value) -> Result<Mount, Error> {
    if let Value::Mapping(m) = v {
        let mut out = Mount {
            volume: String::new(),
            target: String::new(),
            read_only: false,
        };
        for (k, v) in m {
            let k = key_str(path, k)?;
            let at = format!("{path}.{k}");
            match k {
                "type" => match string(&at, v)?.as_str() {
                    "volume" => {}
                    "bind" => return Err(refuse(&at, BIND_REFUSED)),
                    other => {
                        return Err(refuse(
                            &at,
                            format!("`{other}` mounts are not supported; use a named volume"),
                        ));
                    }
                },
                "source" => out.volume = string(&at, v)?,
                "target" => out.target = string(&at, v)?,
                "read_only" => {
                    out.read_only = v
                        .as_bool()
                        .ok_or_else(|| refuse(&at, "expected true or false"))?;
                }
                _ => {
                    return Err(refuse(
                        &at,
                        "not supported (supported: type, source, target, read_only)",
                    ));
                }
            }
        }
        if out.volume.is_empty() || out.target.is_empty() {
            return Err(refuse(
                path,
                "a mount needs a `source` volume and a `target`",
            ));
        }
        if out.volume.starts_with(['/', '.', '~']) {
            return Err(refuse(path, BIND_REFUSED));
        }
        return Ok(out);
    }
    let text = string(path, v)?;
    let parts: Vec<&str> = text.split(':').collect();
    let (source, target, mode) = match parts.as_slice() {
        [s, t] => (*s, *t, ""),
        [s, t, m] => (*s, *t, *m),
        [_] => {
            return Err(refuse(
                path,
                format!("`{text}` is an anonymous volume; name it: `<volume>:{text}`"),
            ));
        }
        _ => return Err(refuse(path, format!("`{text}` is not volume:target[:ro]"))),
    };
    if source.starts_with(['/', '.', '~']) {
        return Err(refuse(path, format!("`{text}`: {BIND_REFUSED}")));
    }
    let read_only = match mode {
        "" | "rw" => false,
        "ro" => true,
        other => return Err(refuse(path, format!("mode `{other}` is not ro or rw"))),
    };
    Ok(Mount {
        volume: source.to_owned(),
        target: target.to_owned(),
        read_only,
    })
}

fn healthcheck(path: &str, v: &Value) -> Result<Option<HealthCheck>, Error> {
    let mut h = HealthCheck {
        command: Vec::new(),
        interval: Duration::from_secs(30),
        timeout: Duration::from_secs(30),
        retries: 3,
        start_period: Duration::ZERO,
    };
    for (k, v) in mapping(path, v)? {
        let k = key_str(path, k)?;
        let at = format!("{path}.{k}");
        match k {
            "test" => {
                h.command = match v {
                    Value::String(s) => vec!["sh".into(), "-c".into(), interpolate(&at, s)?],
                    _ => {
                        let t = strings(&at, v)?;
                        match t.split_first() {
                            Some((first, rest)) if first == "CMD" => rest.to_vec(),
                            Some((first, [script])) if first == "CMD-SHELL" => {
                                vec!["sh".into(), "-c".into(), script.clone()]
                            }
                            Some((first, [])) if first == "NONE" => return Ok(None),
                            _ => {
                                return Err(refuse(
                                    &at,
                                    "expected [\"CMD\", …], [\"CMD-SHELL\", \"…\"], [\"NONE\"] or a string",
                                ));
                            }
                        }
                    }
                }
            }
            "interval" => h.interval = duration(&at, &string(&at, v)?)?,
            "timeout" => h.timeout = duration(&at, &string(&at, v)?)?,
            "start_period" => h.start_period = duration(&at, &string(&at, v)?)?,
            "retries" => {
                h.retries = v
                    .as_u64()
                    .and_then(|r| u32::try_from(r).ok())
                    .ok_or_else(|| refuse(&at, "expected a count"))?;
            }
            "disable" => {
                if v.as_bool() == Some(true) {
                    return Ok(None);
                }
            }
            _ => {
                return Err(refuse(
                    &at,
                    "not supported (supported: test, interval, timeout, retries, start_period, disable)",
                ));
            }
        }
    }
    if h.command.is_empty() {
        return Err(refuse(path, "a health check needs a `test`"));
    }
    Ok(Some(h))
}

fn depends_on(path: &str, v: &Value) -> Result<Vec<Dependency>, Error> {
    match v {
        Value::Sequence(_) => Ok(strings(path, v)?
            .into_iter()
            .map(|service| Dependency {
                service,
                healthy: false,
            })
            .collect()),
        Value::Mapping(m) => m
            .iter()
            .map(|(k, opts)| {
                let service = key_str(path, k)?.to_owned();
                let at = format!("{path}.{service}");
                let mut healthy = false;
                for (k, v) in mapping(&at, opts)? {
                    let k = key_str(&at, k)?;
                    match (k, string(&format!("{at}.{k}"), v)?.as_str()) {
                        ("condition", "service_started") => healthy = false,
                        ("condition", "service_healthy") => healthy = true,
                        ("condition", other) => {
                            return Err(refuse(
                                &format!("{at}.condition"),
                                format!(
                                    "`{other}` is not supported (service_started, service_healthy)"
                                ),
                            ));
                        }
                        ("restart" | "required", _) => {}
                        _ => return Err(refuse(&format!("{at}.{k}"), "not supported (condition)")),
                    }
                }
                Ok(Dependency { service, healthy })
            })
            .collect(),
        _ => Err(refuse(path, "expected a list or mapping of services")),
    }
}

fn deploy(path: &str, v: &Value, s: &mut ServiceSpec) -> Result<(), Error> {
    for (k, v) in mapping(path, v)? {
        let k = key_str(path, k)?;
        let at = format!("{path}.{k}");
        match k {
            "replicas" => {
                s.replicas = v
                    .as_u64()
                    .and_then(|r| u32::try_from(r).ok())
                    .ok_or_else(|| refuse(&at, "expected a count"))?;
            }
            "resources" => {
                for (k, v) in mapping(&at, v)? {
                    let k = key_str(&at, k)?;
                    let at = format!("{at}.{k}");
                    if k != "limits" {
                        return Err(refuse(&at, "not supported (limits)"));
                    }
                    for (k, v) in mapping(&at, v)? {
                        let k = key_str(&at, k)?;
                        let at = format!("{at}.{k}");
                        match k {
                            "memory" => s.resources.memory_bytes = bytes(&at, &string(&at, v)?)?,
                            "cpus" => s.resources.cpu_millis = cpus(&at, &string(&at, v)?)?,
                            "pids" => {}
                            _ => return Err(refuse(&at, "not supported (memory, cpus)")),
                        }
                    }
                }
            }
            _ => return Err(refuse(&at, "not supported (replicas, resources)")),
        }
    }
    Ok(())
}

/// `1m30s`, `10s`, `500ms`, `2h`.
fn duration(path: &str, s: &str) -> Result<Duration, Error> {
    let bad = || {
        refuse(
            path,
            format!("`{s}` is not a duration like 30s, 1m30s or 500ms"),
        )
    };
    let mut total = Duration::ZERO;
    let mut rest = s.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .ok_or_else(bad)?;
        let n: f64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let secs = match &rest[..unit] {
            "us" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        rest = &rest[unit..];
        total += Duration::try_from_secs_f64(n * secs).map_err(|_| bad())?;
    }
    Ok(total)
}

/// `64m`, `1g`, `512k`, `100mb`, `1048576`.
fn bytes(path: &str, s: &str) -> Result<u64, Error> {
    let bad = || refuse(path, format!("`{s}` is not a size like 64m, 1g or 512k"));
    let lower = s.trim().to_ascii_lowercase();
    let lower = lower
        .strip_suffix("ib")
        .or_else(|| lower.strip_suffix('b'))
        .unwrap_or(&lower);
    let split = lower
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(lower.len());
    let n: f64 = lower[..split].parse().map_err(|_| bad())?;
    let unit: u64 = match &lower[split..] {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        _ => return Err(bad()),
    };
    let v = n * unit as f64;
    if !(0.0..=(1u64 << 50) as f64).contains(&v) {
        return Err(bad());
    }
    #[allow(clippy::cast_possible_truncation)] // bounded just above
    Ok(v as u64)
}

/// `0.5` → 500 thousandths.
fn cpus(path: &str, s: &str) -> Result<u32, Error> {
    let n: f64 = s
        .trim()
        .parse()
        .map_err(|_| refuse(path, format!("`{s}` is not a number of CPUs")))?;
    if !(0.001..=1024.0).contains(&n) {
        return Err(refuse(
            path,
            format!("{s} CPUs is out of range (0.001 to 1024)"),
        ));
    }
    #[allow(clippy::cast_possible_truncation)] // bounded just above
    Ok((n * 1000.0).round() as u32)
}

/// Splits `s` into words as a POSIX shell would (quotes and backslashes; no
/// expansion); `None` on an unbalanced quote.
fn split_words(s: &str) -> Option<Vec<String>> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' | '\n' => {
                if let Some(w) = word.take() {
                    words.push(w);
                }
            }
            '\'' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next()? {
                        '\'' => break,
                        c => w.push(c),
                    }
                }
            }
            '"' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next()? {
                        '"' => break,
                        '\\' => match chars.next()? {
                            c @ ('"' | '\\' | '$' | '`') => w.push(c),
                            c => {
                                w.push('\\');
                                w.push(c);
                            }
                        },
                        c => w.push(c),
                    }
                }
            }
            '\\' => word.get_or_insert_with(String::new).push(chars.next()?),
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(word);
    Some(words)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deploy::spec::Resources;

    const APP: &str = r#"
name: shop
services:
  web:
    image: hanzo-test/busybox:1
    command: httpd -f -p 80 -h /www
    ports: ["127.0.0.1:18080:80", {target: 53, published: 15353, protocol: udp}]
    networks: [front]
    labels: {tier: web}
    healthcheck:
      test: ["CMD", "wget", "-q", "-O-", "http://localhost/"]
      interval: 1s
      timeout: 500ms
      retries: 2
      start_period: 1m30s
    depends_on:
      worker: {condition: service_healthy}
    restart: unless-stopped
    deploy:
      replicas: 2
      resources: {limits: {cpus: "0.5", memory: 64M}}
  worker:
    image: hanzo-test/busybox:1
    entrypoint: ["sh", "-c"]
    command: ["echo 'it ran' >> /data/log; sleep 1000"]
    environment:
      - MODE=batch
      - EMPTY=
    volumes: ["data:/data", {type: volume, source: cache, target: /cache, read_only: true}]
    healthcheck: {test: "test -f /data/log", interval: 1s}
    x-note: ignored
networks:
  front:
volumes:
  data:
  cache: {}
x-anchors: {}
"#;

    #[test]
    fn a_two_service_app_reads_into_a_checked_spec() {
        let spec = parse(APP, None).unwrap();
        spec.validate().unwrap();
        assert_eq!(spec.name, "shop");
        assert_eq!(
            (spec.networks.as_slice(), spec.volumes.as_slice()),
            (
                &["front".to_owned()][..],
                &["data".to_owned(), "cache".to_owned()][..]
            )
        );
        let web = spec.service("web").unwrap();
        assert_eq!(web.command, "httpd");
        assert_eq!(web.args, ["-f", "-p", "80", "-h", "/www"]);
        assert_eq!(
            web.ports[0],
            Port {
                host: 18080,
                container: 80,
                udp: false,
                host_ip: "127.0.0.1".into()
            }
        );
        assert_eq!(
            web.ports[1],
            Port {
                host: 15353,
                container: 53,
                udp: true,
                host_ip: String::new()
            }
        );
        assert_eq!(web.replicas, 2);
        assert_eq!(
            web.resources,
            Resources {
                memory_bytes: 64 << 20,
                cpu_millis: 500
            }
        );
        assert_eq!(web.restart, Restart::Always);
        let h = web.health.as_ref().unwrap();
        assert_eq!(h.command, ["wget", "-q", "-O-", "http://localhost/"]);
        assert_eq!(
            (h.interval, h.timeout, h.retries, h.start_period),
            (
                Duration::from_secs(1),
                Duration::from_millis(500),
                2,
                Duration::from_secs(90)
            )
        );
        assert_eq!(
            web.depends_on,
            [Dependency {
                service: "worker".into(),
                healthy: true
            }]
        );
        assert_eq!(web.labels["tier"], "web");
        let worker = spec.service("worker").unwrap();
        assert_eq!(worker.entrypoint, ["sh", "-c"]);
        assert_eq!(worker.command, "echo 'it ran' >> /data/log; sleep 1000");
        assert_eq!(worker.env["MODE"], "batch");
        assert_eq!(worker.env["EMPTY"], "");
        assert_eq!(
            worker.volumes[1],
            Mount {
                volume: "cache".into(),
                target: "/cache".into(),
                read_only: true
            }
        );
        assert_eq!(worker.restart, Restart::No);
        let order: Vec<_> = spec
            .start_order()
            .unwrap()
            .iter()
            .map(|s| s.name.as_str())
            .collect();
        assert_eq!(order, ["worker", "web"]);
    }

    #[test]
    fn what_the_node_does_not_do_is_refused_by_name() {
        let refused = |yaml: &str, needle: &str| {
            let err = parse(yaml, Some("x"))
                .and_then(|s| s.validate().map(|()| s))
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{err}\n  lacks: {needle}");
        };
        let svc = |extra: &str| format!("services:\n  a:\n    image: i\n{extra}");
        refused(
            &svc("    privileged: true\n"),
            "`services.a.privileged`: a workload never gets the host's privileges",
        );
        refused(
            &svc("    network_mode: host\n"),
            "`services.a.network_mode`",
        );
        refused(&svc("    cap_add: [NET_ADMIN]\n"), "`services.a.cap_add`");
        refused(
            &svc("    devices: [\"/dev/sda:/dev/sda\"]\n"),
            "`services.a.devices`",
        );
        refused(
            &svc("    volumes: [\"/etc:/host-etc\"]\n"),
            "host bind mounts are refused",
        );
        refused(
            &svc("    volumes: [\"./src:/src\"]\n"),
            "host bind mounts are refused",
        );
        refused(
            &svc("    volumes: [{type: bind, source: /, target: /h}]\n"),
            "host bind mounts are refused",
        );
        refused(&svc("    volumes: [\"/data\"]\n"), "anonymous volume");
        refused(
            &svc("    volumes: [\"undeclared:/data\"]\n"),
            "does not declare",
        );
        refused(
            &svc("    networks: [nowhere]\n"),
            "network `nowhere`, which the deployment does not declare",
        );
        refused(
            &svc("    frobnicate: 1\n"),
            "`services.a.frobnicate`: not supported by hanzo-node",
        );
        refused(&svc("    ports: [\"80\"]\n"), "publishes no host port");
        refused(&svc("    ports: [\"8000-8010:80\"]\n"), "ranges");
        refused(&svc("    restart: sometimes\n"), "`sometimes` is not no");
        refused(
            &svc("    environment: [FROM_SHELL]\n"),
            "write `FROM_SHELL=value`",
        );
        refused(&svc("    depends_on: [ghost]\n"), "depends on `ghost`");
        refused(
            &svc("    healthcheck: {interval: 1x, test: true}\n"),
            "not a duration",
        );
        refused(
            &svc("    deploy: {resources: {limits: {memory: lots}}}\n"),
            "not a size",
        );
        refused(&svc("    labels: {hanzo.owner: me}\n"), "the node's own");
        refused(
            &svc("    command: echo $HOME\n"),
            "`$HOME` would be interpolated",
        );
        refused(
            &svc("    environment: {A: \"${B}\"}\n"),
            "`$B` would be interpolated",
        );
        refused(
            "services:\n  a: {image: i, depends_on: [b]}\n  b: {image: i, depends_on: [a]}\n",
            "cycle",
        );
        refused(
            "secrets: {}\nservices: {a: {image: i}}\n",
            "`secrets`: not supported at the top level",
        );
        refused(
            "volumes: {v: {external: true}}\nservices: {a: {image: i}}\n",
            "`volumes.v.external`",
        );
        refused("just: text\n", "has no `services`");
        refused("- a list\n", "not a compose file");
        refused("services: [\n", "not YAML");
        refused(&"#".repeat(MAX_COMPOSE_BYTES + 1), "at most 262144");
        let nameless = parse("services: {a: {image: i}}\n", None)
            .unwrap_err()
            .to_string();
        assert!(nameless.contains("needs a name"), "{nameless}");
    }

    #[test]
    fn shell_words_durations_and_sizes() {
        assert_eq!(
            split_words(r#"sh -c 'echo "a b"' x\ y "q\"q""#).unwrap(),
            ["sh", "-c", "echo \"a b\"", "x y", "q\"q"]
        );
        assert!(split_words("echo 'open").is_none());
        assert_eq!(duration("p", "1h2m3s").unwrap(), Duration::from_secs(3723));
        assert_eq!(duration("p", "1.5s").unwrap(), Duration::from_millis(1500));
        assert!(duration("p", "").is_err() && duration("p", "10").is_err());
        assert_eq!(bytes("p", "1g").unwrap(), 1 << 30);
        assert_eq!(bytes("p", "512KiB").unwrap(), 512 << 10);
        assert_eq!(bytes("p", "100").unwrap(), 100);
        assert!(bytes("p", "-1m").is_err());
        assert_eq!(cpus("p", "1.25").unwrap(), 1250);
        assert_eq!(
            interpolate("p", "a $$HOME $1 $ 5$").unwrap(),
            "a $HOME $1 $ 5$"
        );
    }

    proptest::proptest! {
        #[test]
        fn any_text_parses_or_is_refused(yaml in ".{0,400}") {
            let _ = parse(&yaml, Some("x"));
        }

        #[test]
        fn edited_compose_files_parse_or_are_refused(text in crate::fuzz::mutated_text(APP.to_owned())) {
            if let Ok(spec) = parse(&text, Some("x")) {
                let _ = spec.validate();
            }
        }
    }
}

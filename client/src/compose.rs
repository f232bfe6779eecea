//! The commands a `docker compose` user reaches for, against a node: `up`, `ps`,
//! `logs`, `exec`, `scale`, `down`, `events`. They print what compose prints (progress
//! lines, tables), or JSON where a script reads them.

use std::{io::Write, path::Path, process::Stdio};

use tokio::io::AsyncReadExt;

use crate::{Client, Error, Output, proto};

/// The deployment a compose file makes: `explicit` (`-p`), else the file's top-level
/// `name:`, else its directory's name — as compose names projects.
pub fn project_name(explicit: Option<&str>, file: &Path, text: &str) -> String {
    if let Some(n) = explicit {
        return n.to_owned();
    }
    let top = text.lines().find_map(|l| {
        let v = l.strip_prefix("name:")?.trim().trim_matches(['"', '\'']);
        (!v.is_empty()).then(|| v.to_owned())
    });
    top.unwrap_or_else(|| {
        let dir = std::fs::canonicalize(file)
            .ok()
            .and_then(|p| Some(p.parent()?.file_name()?.to_string_lossy().into_owned()))
            .unwrap_or_default();
        let name: String = dir
            .to_ascii_lowercase()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        name.trim_matches('-').to_owned()
    })
}

fn state(c: &proto::ContainerStatus) -> String {
    match c.state() {
        proto::ContainerState::Running if !c.healthy => "Running (unhealthy)".into(),
        proto::ContainerState::Running => "Running".into(),
        proto::ContainerState::Starting => "Starting".into(),
        proto::ContainerState::Exited => format!("Exited ({})", c.exit_code),
        proto::ContainerState::Stopped => "Stopped".into(),
        proto::ContainerState::Unspecified => "Unknown".into(),
    }
}

fn json(c: &proto::ContainerStatus, name: &str) -> serde_json::Value {
    serde_json::json!({
        "Name": format!("{name}-{}", c.container),
        "Container": c.container,
        "Service": c.service,
        "Deployment": c.deployment,
        "State": state(c),
        "Healthy": c.healthy,
        "Restarts": c.restarts,
        "ExitCode": c.exit_code,
    })
}

fn io(e: std::io::Error) -> Error {
    Error::Local(e.to_string())
}

/// Deploys `yaml` as `name` and prints each container's state, as `docker compose up
/// -d` does.
pub async fn up(
    client: &Client,
    yaml: &str,
    name: &str,
    out: &mut impl Write,
) -> Result<(), Error> {
    let status = client.deploy_compose(yaml, Some(name)).await?;
    let n = status.containers.len();
    writeln!(out, "[+] Running {n}/{n}").map_err(io)?;
    for c in &status.containers {
        let what = match c.state() {
            proto::ContainerState::Running => "Started".to_owned(),
            _ => state(c),
        };
        writeln!(out, " ✔ Container {name}-{:<24} {what}", c.container).map_err(io)?;
    }
    Ok(())
}

/// The deployment's containers: a table, or JSON lines.
pub async fn ps(
    client: &Client,
    name: &str,
    as_json: bool,
    out: &mut impl Write,
) -> Result<(), Error> {
    let containers = client.list(name).await?;
    if as_json {
        for c in &containers {
            writeln!(out, "{}", json(c, name)).map_err(io)?;
        }
        return Ok(());
    }
    writeln!(
        out,
        "{:<32} {:<16} {:<22} RESTARTS",
        "NAME", "SERVICE", "STATUS"
    )
    .map_err(io)?;
    for c in &containers {
        writeln!(
            out,
            "{:<32} {:<16} {:<22} {}",
            format!("{name}-{}", c.container),
            c.service,
            state(c),
            c.restarts
        )
        .map_err(io)?;
    }
    Ok(())
}

/// `<service>` of container `<service>-<n>`.
fn service_of(container: &str) -> &str {
    container.rsplit_once('-').map_or(container, |(s, _)| s)
}

/// Log lines as `<container> | <line>` (of one service, or all), following while
/// `follow`.
pub async fn logs(
    client: &Client,
    name: &str,
    service: Option<&str>,
    follow: bool,
    tail: u32,
    out: &mut impl Write,
) -> Result<(), Error> {
    let mut lines = client.logs(name, "", tail, follow).await?;
    while let Some(l) = lines.message().await? {
        if l.keep_alive || service.is_some_and(|s| service_of(&l.container) != s) {
            continue;
        }
        writeln!(
            out,
            "{name}-{} | {}",
            l.container,
            String::from_utf8_lossy(&l.line)
        )
        .map_err(io)?;
        out.flush().map_err(io)?;
    }
    Ok(())
}

/// Events as they come: a line each, or JSON lines.
pub async fn events(
    client: &Client,
    name: &str,
    as_json: bool,
    out: &mut impl Write,
) -> Result<(), Error> {
    let mut events = client.events(name).await?;
    while let Some(e) = events.message().await? {
        let at = crate::siwe::rfc3339(u64::try_from(e.at / 1000).unwrap_or(0));
        let kind = e
            .kind()
            .as_str_name()
            .trim_start_matches("EVENT_KIND_")
            .to_ascii_lowercase();
        if as_json {
            let v = serde_json::json!({
                "time": at, "container": e.container, "action": kind,
                "exit_code": e.exit_code, "detail": e.detail,
            });
            writeln!(out, "{v}").map_err(io)?;
        } else {
            writeln!(
                out,
                "{at} container {kind} {name}-{} ({})",
                e.container, e.detail
            )
            .map_err(io)?;
        }
        out.flush().map_err(io)?;
    }
    Ok(())
}

/// Sets `service`'s replicas and prints the containers' states.
pub async fn scale(
    client: &Client,
    name: &str,
    service: &str,
    replicas: u32,
    out: &mut impl Write,
) -> Result<(), Error> {
    let status = client.scale(name, service, replicas).await?;
    for c in status.containers.iter().filter(|c| c.service == service) {
        writeln!(out, " ✔ Container {name}-{:<24} {}", c.container, state(c)).map_err(io)?;
    }
    Ok(())
}

/// Stops and removes the deployment (named volumes stay).
pub async fn down(client: &Client, name: &str, out: &mut impl Write) -> Result<(), Error> {
    let containers = client.list(name).await?;
    client.remove(name).await?;
    writeln!(out, "[+] Running {0}/{0}", containers.len()).map_err(io)?;
    for c in &containers {
        writeln!(out, " ✔ Container {name}-{:<24} Removed", c.container).map_err(io)?;
    }
    Ok(())
}

/// The terminal's size (rows, cols), from `stty`.
fn terminal_size() -> Option<(u32, u32)> {
    let out = std::process::Command::new("stty")
        .arg("size")
        .stdin(Stdio::inherit())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut words = text.split_whitespace().map(str::parse::<u32>);
    match (words.next(), words.next()) {
        (Some(Ok(rows)), Some(Ok(cols))) => Some((rows, cols)),
        _ => None,
    }
}

/// Puts the terminal on stdin in raw mode until dropped.
struct RawMode(Option<nix::sys::termios::Termios>);

impl RawMode {
    fn enable() -> Self {
        use nix::sys::termios::{SetArg, cfmakeraw, tcgetattr, tcsetattr};
        let stdin = std::io::stdin();
        let Ok(saved) = tcgetattr(&stdin) else {
            return Self(None);
        };
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        if tcsetattr(&stdin, SetArg::TCSANOW, &raw).is_err() {
            return Self(None);
        }
        Self(Some(saved))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(saved) = &self.0 {
            let _ = nix::sys::termios::tcsetattr(
                std::io::stdin(),
                nix::sys::termios::SetArg::TCSANOW,
                saved,
            );
        }
    }
}

/// Runs `command` in `container`, with this process's stdin (when `interactive`) and,
/// with `tty`, a terminal: raw mode here, the size sent at start and on each resize.
/// The command's exit code.
pub async fn exec(
    client: &Client,
    name: &str,
    container: &str,
    command: Vec<String>,
    interactive: bool,
    tty: bool,
) -> Result<i32, Error> {
    let size = if tty {
        Some(terminal_size().unwrap_or((24, 80)))
    } else {
        None
    };
    let mut session = client.exec(name, container, command, size).await?;
    let _raw = tty.then(RawMode::enable);
    let input = session.input();
    let pump = tokio::spawn(async move {
        use proto::exec_input::Input;
        let send = |i: Input| {
            let input = input.clone();
            async move {
                input
                    .send(proto::ExecInput { input: Some(i) })
                    .await
                    .is_ok()
            }
        };
        let mut winch = if tty {
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change()).ok()
        } else {
            None
        };
        let mut stdin = tokio::io::stdin();
        let mut buf = vec![0u8; 8192];
        let mut reading = interactive;
        if !reading {
            send(Input::StdinEof(true)).await;
        }
        loop {
            tokio::select! {
                n = stdin.read(&mut buf), if reading => match n {
                    Ok(0) | Err(_) => {
                        reading = false;
                        if !send(Input::StdinEof(true)).await { return; }
                    }
                    Ok(n) => if !send(Input::Stdin(buf[..n].to_vec())).await { return; },
                },
                Some(()) = async { match winch.as_mut() { Some(w) => w.recv().await, None => std::future::pending().await } } => {
                    if let Some((rows, cols)) = terminal_size()
                        && !send(Input::Resize(proto::TerminalSize { rows, cols })).await
                    {
                        return;
                    }
                }
                () = input.closed() => return,
            }
        }
    });
    let mut code = -1;
    let (mut stdout, mut stderr) = (std::io::stdout(), std::io::stderr());
    while let Some(o) = session.next().await? {
        match o {
            Output::Stdout(b) => {
                stdout.write_all(&b).map_err(io)?;
                stdout.flush().map_err(io)?;
            }
            Output::Stderr(b) => {
                stderr.write_all(&b).map_err(io)?;
                stderr.flush().map_err(io)?;
            }
            Output::Exit(c) => {
                code = c;
                break;
            }
        }
    }
    pump.abort();
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn projects_are_named_as_compose_names_them() {
        let file = Path::new("/nonexistent/My App/docker-compose.yml");
        assert_eq!(project_name(Some("x"), file, "name: shop\n"), "x");
        assert_eq!(
            project_name(None, file, "services: {}\nname: 'shop'\n"),
            "shop"
        );
        assert_eq!(service_of("web-12"), "web");
        assert_eq!(service_of("my-web-1"), "my-web");
    }
}

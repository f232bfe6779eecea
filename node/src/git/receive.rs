//! The receive-pack protocol (v0/v1; pushes have no v2): the advertisement, the
//! request head (commands or a push certificate), and the report.

use tokio::io::AsyncRead;

use super::{
    Error,
    cert::{Command, PushCert},
    pktline::{self, Pkt},
};

/// Capabilities the node offers for pushes, besides `push-cert=<nonce>`.
const CAPABILITIES: &str = "report-status delete-refs side-band-64k quiet atomic ofs-delta push-options object-format=sha1 agent=hanzo-node/";

/// The ref advertisement for `git-receive-pack`, nonce included.
pub fn advertise(refs: &[(String, gix::ObjectId)], nonce: &str) -> Vec<u8> {
    let mut out = Vec::new();
    pktline::write(&mut out, b"# service=git-receive-pack\n");
    pktline::flush(&mut out);
    let caps = format!(
        "{CAPABILITIES}{} push-cert={nonce}",
        env!("CARGO_PKG_VERSION")
    );
    let mut first = Some(caps);
    for (name, id) in refs {
        let line = match first.take() {
            Some(caps) => format!("{id} {name}\0{caps}\n"),
            None => format!("{id} {name}\n"),
        };
        pktline::write(&mut out, line.as_bytes());
    }
    if let Some(caps) = first {
        let zero = gix::ObjectId::null(gix::hash::Kind::Sha1);
        pktline::write(
            &mut out,
            format!("{zero} capabilities^{{}}\0{caps}\n").as_bytes(),
        );
    }
    pktline::flush(&mut out);
    out
}

/// What the client asked for.
#[derive(Debug, Clone, Copy, Default)]
pub struct Caps {
    /// Wrap the report in side-band 1 and messages in band 2.
    pub side_band: bool,
    /// Send a report.
    pub report_status: bool,
    /// No progress messages.
    pub quiet: bool,
    /// Push options follow the commands.
    pub push_options: bool,
}

impl Caps {
    fn parse(list: &[u8]) -> Self {
        let mut caps = Self::default();
        for cap in list.split(|b| *b == b' ') {
            match cap {
                b"side-band-64k" | b"side-band" => caps.side_band = true,
                b"report-status" | b"report-status-v2" => caps.report_status = true,
                b"quiet" => caps.quiet = true,
                b"push-options" => caps.push_options = true,
                _ => {}
            }
        }
        caps
    }
}

/// The head of a push request: everything before the pack.
#[derive(Debug)]
pub struct Request {
    /// The ref updates; none for the probe git sends before a large push.
    pub commands: Vec<Command>,
    /// The push certificate, when the push was signed.
    pub cert: Option<PushCert>,
    /// Requested capabilities.
    pub caps: Caps,
}

/// Reads a push request's head from `r`, reading at most `max_bytes`.
pub async fn read_request<R: AsyncRead + Unpin>(
    r: &mut R,
    max_bytes: usize,
) -> Result<Request, Error> {
    let mut budget = max_bytes;
    let mut next = async |budget: &mut usize| -> Result<Option<Vec<u8>>, Error> {
        match pktline::read(r, budget).await {
            Ok(Pkt::Data(d)) => Ok(Some(d)),
            Ok(Pkt::Flush) => Ok(None),
            Ok(_) => Err(Error::Rejected(
                "unexpected delimiter in push request".into(),
            )),
            Err(e) => Err(Error::Rejected(format!("bad push request: {e}"))),
        }
    };
    let mut line = next(&mut budget).await?;
    // Shallow boundaries of a push from a shallow clone: nothing to check here.
    while line.as_ref().is_some_and(|l| l.starts_with(b"shallow ")) {
        line = next(&mut budget).await?;
    }
    // No commands: git's probe before a large (chunked) push; nothing to do.
    let Some(first) = line else {
        return Ok(Request {
            commands: Vec::new(),
            cert: None,
            caps: Caps::default(),
        });
    };

    if let Some(rest) = first.strip_prefix(b"push-cert\0") {
        let caps = Caps::parse(rest.strip_suffix(b"\n").unwrap_or(rest));
        let mut text = Vec::new();
        loop {
            let line = next(&mut budget).await?.ok_or_else(|| {
                Error::Rejected("push certificate ends without push-cert-end".into())
            })?;
            if line == b"push-cert-end\n" {
                break;
            }
            text.extend_from_slice(&line);
        }
        if next(&mut budget).await?.is_some() {
            return Err(Error::Rejected(
                "expected a flush after push-cert-end".into(),
            ));
        }
        let cert = PushCert::parse(text).map_err(|e| Error::Rejected(e.to_string()))?;
        // The options are in the certificate too, signed: those are the ones used.
        if caps.push_options {
            while next(&mut budget).await?.is_some() {}
        }
        return Ok(Request {
            commands: cert.commands.clone(),
            cert: Some(cert),
            caps,
        });
    }

    let (command, caps) = match first.iter().position(|b| *b == 0) {
        Some(nul) => (&first[..nul], Caps::parse(trim_lf(&first[nul + 1..]))),
        None => (&first[..], Caps::default()),
    };
    let mut commands = vec![parse_command(command)?];
    while let Some(line) = next(&mut budget).await? {
        commands.push(parse_command(&line)?);
    }
    // Unsigned pushes are refused later; their options are read and dropped.
    if caps.push_options {
        while next(&mut budget).await?.is_some() {}
    }
    Ok(Request {
        commands,
        cert: None,
        caps,
    })
}

fn trim_lf(b: &[u8]) -> &[u8] {
    b.strip_suffix(b"\n").unwrap_or(b)
}

fn parse_command(line: &[u8]) -> Result<Command, Error> {
    Command::parse(trim_lf(line)).map_err(|e| Error::Rejected(e.to_string()))
}

/// The outcome of a push, as the client is told.
#[derive(Debug)]
pub struct Report {
    /// `Err` when the pack itself was refused.
    pub unpack: Result<(), String>,
    /// Per ref: ok, or the reason it was refused.
    pub refs: Vec<(String, Result<(), String>)>,
    /// Lines shown as `remote: …`.
    pub messages: Vec<String>,
}

impl Report {
    /// Every command refused for `reason`, shown on a `remote: error:` line too.
    pub fn refused(commands: &[Command], reason: &str) -> Self {
        let short = reason.replace('\n', " ");
        Self {
            unpack: Ok(()),
            refs: commands
                .iter()
                .map(|c| (c.name.clone(), Err(short.clone())))
                .collect(),
            messages: vec![format!("error: {reason}")],
        }
    }

    /// The response body for a client with `caps`.
    pub fn encode(&self, caps: Caps) -> Vec<u8> {
        let mut status = Vec::new();
        match &self.unpack {
            Ok(()) => pktline::write(&mut status, b"unpack ok\n"),
            Err(e) => pktline::write(&mut status, format!("unpack {e}\n").as_bytes()),
        }
        for (name, result) in &self.refs {
            let line = match result {
                Ok(()) => format!("ok {name}\n"),
                Err(why) => format!("ng {name} {why}\n"),
            };
            pktline::write(&mut status, line.as_bytes());
        }
        pktline::flush(&mut status);

        let mut out = Vec::new();
        if caps.side_band {
            for m in &self.messages {
                pktline::sideband(&mut out, 2, format!("{m}\n").as_bytes());
            }
            if caps.report_status {
                pktline::sideband(&mut out, 1, &status);
            }
            pktline::flush(&mut out);
        } else if caps.report_status {
            out = status;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ZERO: &str = "0000000000000000000000000000000000000000";
    const ONE: &str = "1111111111111111111111111111111111111111";

    fn request(lines: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for l in lines {
            pktline::write(&mut out, l);
        }
        pktline::flush(&mut out);
        out
    }

    #[tokio::test]
    async fn reads_plain_commands() {
        let first = format!("{ZERO} {ONE} refs/heads/main\0report-status side-band-64k\n");
        let second = format!("{ONE} {ZERO} refs/heads/old\n");
        let body = request(&[first.as_bytes(), second.as_bytes()]);
        let req = read_request(&mut &body[..], 1 << 16).await.unwrap();
        assert!(req.cert.is_none());
        assert!(req.caps.side_band && req.caps.report_status && !req.caps.quiet);
        assert_eq!(req.commands.len(), 2);
        assert!(req.commands[1].is_delete());
        let probe = read_request(&mut &b"0000"[..], 1 << 16).await.unwrap();
        assert!(probe.commands.is_empty());
        let err = read_request(&mut &body[..20], 1 << 16).await.unwrap_err();
        assert!(err.to_string().contains("ended inside"), "{err}");
        let err = read_request(&mut &body[..], 30).await.unwrap_err();
        assert!(err.to_string().contains("max_request_bytes"), "{err}");
    }

    #[test]
    fn report_in_side_band() {
        let cmd = Command::parse(format!("{ZERO} {ONE} refs/heads/main").as_bytes()).unwrap();
        let report = Report::refused(&[cmd], "no");
        let caps = Caps {
            side_band: true,
            report_status: true,
            quiet: false,
            push_options: false,
        };
        let bytes = report.encode(caps);
        let text = String::from_utf8_lossy(&bytes);
        assert!(text.contains("\u{2}error: no\n"), "{text}");
        assert!(text.contains("ng refs/heads/main no\n"), "{text}");
        assert!(text.ends_with("0000"), "{text}");
    }

    proptest! {
        #[test]
        fn garbage_requests_are_errors(body in proptest::collection::vec(any::<u8>(), 0..400)) {
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let _ = rt.block_on(read_request(&mut &body[..], 1 << 16));
        }

        #[test]
        fn framed_garbage_lines_are_errors(lines in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..120), 0..6)) {
            let mut framed: Vec<&[u8]> = vec![b"push-cert\0report-status\n"];
            framed.extend(lines.iter().map(Vec::as_slice));
            framed.push(b"push-cert-end\n");
            let body = request(&framed);
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            prop_assert!(rt.block_on(read_request(&mut &body[..], 1 << 16)).is_err());
        }
    }
}

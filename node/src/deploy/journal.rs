//! A deployment's output and events: kept in memory up to a bound, fanned out to
//! followers, and — with a file — kept across node restarts: each entry is appended as
//! a length-prefixed postcard record; the file is rewritten from memory once it holds
//! twice the bound, and when it is opened (which also drops a record a crash cut
//! short).

use std::{
    collections::VecDeque,
    io::Write,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use tracing::warn;

use crate::lock;

/// Longest log line kept; longer output is split.
pub const MAX_LINE: usize = 16 << 10;
/// Events kept per deployment.
const EVENTS_KEPT: usize = 1000;
/// Entries a slow follower may fall behind before it skips.
const FOLLOW_BUFFER: usize = 4096;

/// Which output a line came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// One line of a replica's output.
#[derive(Clone, Debug)]
pub struct LogLine {
    /// The replica.
    pub container: Arc<str>,
    /// Which output.
    pub stream: Stream,
    /// Without its newline.
    pub line: Vec<u8>,
    /// Unix milliseconds.
    pub at: u64,
}

/// What happened to a replica or a deployment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    /// First start.
    Started,
    /// Exited (code in the event).
    Exited,
    /// Its health check failed `retries` times in a row.
    Unhealthy,
    /// Started again after exiting.
    Restarted,
    /// A service's replica count changed.
    Scaled,
    /// Stopped on request.
    Stopped,
}

/// One event.
#[derive(Clone, Debug)]
pub struct Event {
    /// The replica, or empty for the deployment.
    pub container: String,
    /// What happened.
    pub kind: EventKind,
    /// For [`EventKind::Exited`]: the exit code, or 128 + signal.
    pub exit_code: i32,
    /// For people.
    pub detail: String,
    /// Unix milliseconds.
    pub at: u64,
}

struct Logs {
    lines: VecDeque<Arc<LogLine>>,
    bytes: usize,
}

/// One entry of a journal file.
#[derive(Serialize, Deserialize)]
enum Record {
    Log {
        container: String,
        stream: Stream,
        line: Vec<u8>,
        at: u64,
    },
    Event {
        container: String,
        kind: EventKind,
        exit_code: i32,
        detail: String,
        at: u64,
    },
}

/// Largest record read back (a line, or an event's detail, with its fields).
const MAX_RECORD: usize = MAX_LINE + (64 << 10);

struct Disk {
    path: PathBuf,
    file: std::fs::File,
    bytes: usize,
}

/// Log lines (bounded by bytes) and events (bounded by count) of one deployment.
pub struct Journal {
    max_bytes: usize,
    /// Where entries persist, when they do.
    disk: Mutex<Option<Disk>>,
    logs: Mutex<Logs>,
    log_tx: broadcast::Sender<Arc<LogLine>>,
    events: Mutex<VecDeque<Arc<Event>>>,
    event_tx: broadcast::Sender<Arc<Event>>,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("max_bytes", &self.max_bytes)
            .finish_non_exhaustive()
    }
}

impl Journal {
    /// Keeps up to `max_bytes` of log lines, in memory only.
    pub fn new(max_bytes: usize) -> Self {
        Self {
            max_bytes,
            disk: Mutex::new(None),
            logs: Mutex::new(Logs {
                lines: VecDeque::new(),
                bytes: 0,
            }),
            log_tx: broadcast::channel(FOLLOW_BUFFER).0,
            events: Mutex::new(VecDeque::new()),
            event_tx: broadcast::channel(FOLLOW_BUFFER).0,
        }
    }

    /// Keeps up to `max_bytes` of log lines, and persists them and the events in the
    /// file at `path`, starting from what it holds. A file that cannot be read or
    /// written is logged and the journal stays in memory.
    pub fn open(max_bytes: usize, path: PathBuf) -> Self {
        let j = Self::new(max_bytes);
        match std::fs::read(&path) {
            Ok(bytes) => {
                for record in records(&bytes) {
                    match record {
                        Record::Log {
                            container,
                            stream,
                            line,
                            at,
                        } => j.keep_log(Arc::new(LogLine {
                            container: container.into(),
                            stream,
                            line,
                            at,
                        })),
                        Record::Event {
                            container,
                            kind,
                            exit_code,
                            detail,
                            at,
                        } => {
                            j.keep_event(Arc::new(Event {
                                container,
                                kind,
                                exit_code,
                                detail,
                                at,
                            }));
                        }
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => {
                warn!(target: super::TARGET, %err, path = %path.display(), "cannot read the journal; starting it empty")
            }
        }
        *lock(&j.disk) = j.rewrite(&path);
        j
    }

    /// Writes what is kept to a new file at `path` (atomically) and opens it for
    /// appending.
    fn rewrite(&self, path: &Path) -> Option<Disk> {
        let mut out = Vec::new();
        {
            let logs = lock(&self.logs);
            let events = lock(&self.events);
            for e in events.iter() {
                frame(
                    &mut out,
                    &Record::Event {
                        container: e.container.clone(),
                        kind: e.kind,
                        exit_code: e.exit_code,
                        detail: e.detail.clone(),
                        at: e.at,
                    },
                );
            }
            for l in &logs.lines {
                frame(&mut out, &log_record(l));
            }
        }
        let tmp = path.with_extension("tmp");
        let written = (|| {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            std::fs::write(&tmp, &out)?;
            std::fs::rename(&tmp, path)?;
            std::fs::OpenOptions::new().append(true).open(path)
        })();
        match written {
            Ok(file) => Some(Disk {
                path: path.to_owned(),
                file,
                bytes: out.len(),
            }),
            Err(err) => {
                warn!(target: super::TARGET, %err, path = %path.display(), "cannot write the journal; it stays in memory only");
                None
            }
        }
    }

    /// Appends `record` to the file, rewriting it once it holds twice the bound.
    fn persist(&self, record: &Record) {
        let mut bytes = Vec::new();
        frame(&mut bytes, record);
        let full = {
            let mut disk = lock(&self.disk);
            let Some(d) = disk.as_mut() else { return };
            if let Err(err) = d.file.write_all(&bytes) {
                warn!(target: super::TARGET, %err, path = %d.path.display(), "cannot append to the journal; it stays in memory only");
                *disk = None;
                return;
            }
            d.bytes += bytes.len();
            (d.bytes > 2 * self.max_bytes + EVENTS_KEPT * 256).then(|| d.path.clone())
        };
        if let Some(path) = full {
            let fresh = self.rewrite(&path);
            *lock(&self.disk) = fresh;
        }
    }

    fn keep_log(&self, entry: Arc<LogLine>) {
        let mut logs = lock(&self.logs);
        logs.bytes += cost(&entry);
        logs.lines.push_back(entry.clone());
        while logs.bytes > self.max_bytes {
            match logs.lines.pop_front() {
                Some(old) => logs.bytes -= cost(&old),
                None => break,
            }
        }
        // Sent under the lock, so a reader's snapshot and subscription do not overlap.
        let _ = self.log_tx.send(entry);
    }

    fn keep_event(&self, event: Arc<Event>) {
        let mut events = lock(&self.events);
        if events.len() == EVENTS_KEPT {
            events.pop_front();
        }
        events.push_back(event.clone());
        let _ = self.event_tx.send(event);
    }

    /// Records a line, dropping the oldest beyond the bound.
    pub fn log(&self, container: &Arc<str>, stream: Stream, line: Vec<u8>) {
        let entry = Arc::new(LogLine {
            container: container.clone(),
            stream,
            line,
            at: now_ms(),
        });
        self.persist(&log_record(&entry));
        self.keep_log(entry);
    }

    /// Records an event.
    pub fn event(&self, container: &str, kind: EventKind, exit_code: i32, detail: String) {
        tracing::info!(target: super::TARGET, container, ?kind, exit_code, %detail, "event");
        let event = Arc::new(Event {
            container: container.to_owned(),
            kind,
            exit_code,
            detail,
            at: now_ms(),
        });
        self.persist(&Record::Event {
            container: event.container.clone(),
            kind,
            exit_code,
            detail: event.detail.clone(),
            at: event.at,
        });
        self.keep_event(event);
    }

    /// The last `tail` lines (all kept when 0) of `container` (all when `None`), and
    /// the lines after them.
    pub fn logs(
        &self,
        container: Option<&str>,
        tail: usize,
    ) -> (Vec<Arc<LogLine>>, broadcast::Receiver<Arc<LogLine>>) {
        let logs = lock(&self.logs);
        let mut kept: Vec<_> = logs
            .lines
            .iter()
            .rev()
            .filter(|l| container.is_none_or(|c| &*l.container == c))
            .take(if tail == 0 { usize::MAX } else { tail })
            .cloned()
            .collect();
        kept.reverse();
        (kept, self.log_tx.subscribe())
    }

    /// Events so far, and those after them.
    pub fn events(&self) -> (Vec<Arc<Event>>, broadcast::Receiver<Arc<Event>>) {
        let events = lock(&self.events);
        (events.iter().cloned().collect(), self.event_tx.subscribe())
    }
}

fn log_record(l: &LogLine) -> Record {
    Record::Log {
        container: l.container.to_string(),
        stream: l.stream,
        line: l.line.clone(),
        at: l.at,
    }
}

/// Appends `record` to `out` behind its length (u32, little-endian).
fn frame(out: &mut Vec<u8>, record: &Record) {
    // Serializing strings, bytes and integers into a Vec cannot fail.
    let bytes = postcard::to_allocvec(record).unwrap_or_default();
    out.extend_from_slice(&u32::try_from(bytes.len()).unwrap_or(u32::MAX).to_le_bytes());
    out.extend_from_slice(&bytes);
}

/// The records in `bytes`, up to the first that is cut short, too long or unreadable.
fn records(mut bytes: &[u8]) -> impl Iterator<Item = Record> + '_ {
    std::iter::from_fn(move || {
        let (len, rest) = bytes.split_first_chunk::<4>()?;
        let len = usize::try_from(u32::from_le_bytes(*len)).ok()?;
        if len > MAX_RECORD || rest.len() < len {
            return None;
        }
        let record = postcard::from_bytes(&rest[..len]).ok()?;
        bytes = &rest[len..];
        Some(record)
    })
}

fn cost(l: &LogLine) -> usize {
    l.line.len() + l.container.len() + 32
}

/// Unix milliseconds now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Splits a byte stream into lines of at most [`MAX_LINE`] bytes, calling `f` on each
/// (without the newline); a last line without a newline is passed too.
pub async fn read_lines<R, F>(mut reader: R, mut f: F)
where
    R: tokio::io::AsyncRead + Unpin,
    F: FnMut(Vec<u8>),
{
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 8192];
    loop {
        let n = match reader.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        let mut start = 0;
        while let Some(i) = buf[start..].iter().position(|&b| b == b'\n') {
            let end = start + i;
            for part in buf[start..end].chunks(MAX_LINE) {
                f(part.to_vec());
            }
            start = end + 1;
        }
        buf.drain(..start);
        while buf.len() >= MAX_LINE {
            f(buf.drain(..MAX_LINE).collect());
        }
    }
    if !buf.is_empty() {
        f(buf);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_are_bounded_and_tailed_per_container() {
        let j = Journal::new(10 * (32 + 3 + 4));
        let (a, b): (Arc<str>, Arc<str>) = ("a-1".into(), "b-1".into());
        for i in 0..20 {
            let c = if i % 2 == 0 { &a } else { &b };
            j.log(c, Stream::Stdout, format!("{i:04}").into_bytes());
        }
        let (all, _) = j.logs(None, 0);
        assert_eq!(all.len(), 10, "the oldest lines went beyond the byte bound");
        assert_eq!(all.last().unwrap().line, b"0019");
        let (tail, mut rx) = j.logs(Some("a-1"), 2);
        let lines: Vec<_> = tail.iter().map(|l| l.line.clone()).collect();
        assert_eq!(lines, vec![b"0016".to_vec(), b"0018".to_vec()]);
        j.log(&a, Stream::Stderr, b"next".to_vec());
        assert_eq!(rx.try_recv().unwrap().line, b"next");
    }

    #[test]
    fn a_journal_file_survives_a_restart_a_torn_tail_and_stays_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        let a: Arc<str> = "a-1".into();
        {
            let j = Journal::open(1000, path.clone());
            j.log(&a, Stream::Stdout, b"before".to_vec());
            j.event("a-1", EventKind::Started, 0, "pid 1".into());
        }
        // A crash cut the last record short.
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(&[200, 0, 0, 0, 1, 2]).unwrap();
        let j = Journal::open(1000, path.clone());
        let (logs, _) = j.logs(None, 0);
        assert_eq!(
            logs.iter().map(|l| l.line.clone()).collect::<Vec<_>>(),
            [b"before".to_vec()]
        );
        let (events, _) = j.events();
        assert_eq!(
            (events[0].kind, events[0].detail.as_str()),
            (EventKind::Started, "pid 1")
        );
        for i in 0..2000 {
            j.log(&a, Stream::Stderr, format!("line {i}").into_bytes());
        }
        let size = std::fs::metadata(&path).unwrap().len();
        assert!(
            size < 2 * 1000 + EVENTS_KEPT as u64 * 256 + 100,
            "rewritten when full: {size}"
        );
        drop(j);
        let (logs, _) = Journal::open(1000, path).logs(None, 1);
        assert_eq!(logs[0].line, b"line 1999");
        assert_eq!(logs[0].stream, Stream::Stderr);
    }

    #[tokio::test]
    async fn long_lines_are_split_and_a_last_partial_line_is_kept() {
        let mut input = vec![b'x'; MAX_LINE + 10];
        input.extend_from_slice(b"\nshort\nend");
        let mut lines = Vec::new();
        read_lines(&input[..], |l| lines.push(l)).await;
        let lens: Vec<_> = lines.iter().map(Vec::len).collect();
        assert_eq!(lens, vec![MAX_LINE, 10, 5, 3]);
        assert_eq!(lines[3], b"end");
    }
}

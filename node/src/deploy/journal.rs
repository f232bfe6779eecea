//! A deployment's output and events: kept in memory up to a bound, and fanned out to
//! followers.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
};

use tokio::sync::broadcast;

use crate::lock;

/// Longest log line kept; longer output is split.
pub const MAX_LINE: usize = 16 << 10;
/// Events kept per deployment.
const EVENTS_KEPT: usize = 1000;
/// Entries a slow follower may fall behind before it skips.
const FOLLOW_BUFFER: usize = 4096;

/// Which output a line came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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

/// Log lines (bounded by bytes) and events (bounded by count) of one deployment.
pub struct Journal {
    max_bytes: usize,
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
    /// Keeps up to `max_bytes` of log lines.
    pub fn new(max_bytes: usize) -> Self {
        Self {
            max_bytes,
            logs: Mutex::new(Logs {
                lines: VecDeque::new(),
                bytes: 0,
            }),
            log_tx: broadcast::channel(FOLLOW_BUFFER).0,
            events: Mutex::new(VecDeque::new()),
            event_tx: broadcast::channel(FOLLOW_BUFFER).0,
        }
    }

    /// Records a line, dropping the oldest beyond the bound.
    pub fn log(&self, container: &Arc<str>, stream: Stream, line: Vec<u8>) {
        let entry = Arc::new(LogLine {
            container: container.clone(),
            stream,
            line,
            at: now_ms(),
        });
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
        let mut events = lock(&self.events);
        if events.len() == EVENTS_KEPT {
            events.pop_front();
        }
        events.push_back(event.clone());
        let _ = self.event_tx.send(event);
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

//! pkt-lines, git's framing: four hex digits of length (counting themselves), then
//! the payload; `0000` flush, `0001` delimiter, `0002` response end. Side-band
//! multiplexing puts a band byte (1 data, 2 progress, 3 error) before each payload.

use tokio::io::{AsyncRead, AsyncReadExt};

/// Largest pkt-line, header included.
pub const MAX_LEN: usize = 65520;
/// Largest payload of one pkt-line.
pub const MAX_DATA: usize = MAX_LEN - 4;

/// A malformed pkt-line.
#[allow(missing_docs)] // each variant's #[error] message documents it
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("pkt-line length {0:?} is not four hex digits")]
    BadLength([u8; 4]),
    #[error("pkt-line length {0} is reserved or below 4")]
    Reserved(usize),
    #[error("pkt-line length {0} exceeds the maximum {MAX_LEN}")]
    TooLong(usize),
    #[error("request ended inside a pkt-line")]
    Truncated,
}

/// One decoded pkt-line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pkt<T> {
    /// `0000`.
    Flush,
    /// `0001`.
    Delim,
    /// `0002`.
    ResponseEnd,
    /// A payload.
    Data(T),
}

/// Decodes a length header: the number of payload bytes that follow, or a special packet.
pub fn decode_len(header: [u8; 4]) -> Result<Pkt<usize>, Error> {
    let text = std::str::from_utf8(&header).map_err(|_| Error::BadLength(header))?;
    if !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Error::BadLength(header));
    }
    let len = usize::from_str_radix(text, 16).map_err(|_| Error::BadLength(header))?;
    match len {
        0 => Ok(Pkt::Flush),
        1 => Ok(Pkt::Delim),
        2 => Ok(Pkt::ResponseEnd),
        3 => Err(Error::Reserved(len)),
        _ if len > MAX_LEN => Err(Error::TooLong(len)),
        _ => Ok(Pkt::Data(len - 4)),
    }
}

/// A packet split off a buffer, and the rest of the buffer.
pub type Split<'a> = (Pkt<&'a [u8]>, &'a [u8]);

/// Splits the first pkt-line off `buf`: the packet and the rest, or `None` when `buf`
/// ends before the packet does.
pub fn split(buf: &[u8]) -> Result<Option<Split<'_>>, Error> {
    let Some((header, rest)) = buf.split_first_chunk::<4>() else {
        return Ok(None);
    };
    Ok(match decode_len(*header)? {
        Pkt::Data(n) if rest.len() < n => None,
        Pkt::Data(n) => Some((Pkt::Data(&rest[..n]), &rest[n..])),
        Pkt::Flush => Some((Pkt::Flush, rest)),
        Pkt::Delim => Some((Pkt::Delim, rest)),
        Pkt::ResponseEnd => Some((Pkt::ResponseEnd, rest)),
    })
}

/// Reads one pkt-line from `r`, counting its bytes against `budget`.
pub async fn read<R: AsyncRead + Unpin>(
    r: &mut R,
    budget: &mut usize,
) -> Result<Pkt<Vec<u8>>, ReadError> {
    let mut header = [0u8; 4];
    r.read_exact(&mut header).await.map_err(ReadError::eof)?;
    let pkt = decode_len(header)?;
    let Pkt::Data(n) = pkt else {
        return Ok(match pkt {
            Pkt::Flush => Pkt::Flush,
            Pkt::Delim => Pkt::Delim,
            _ => Pkt::ResponseEnd,
        });
    };
    *budget = budget.checked_sub(n + 4).ok_or(ReadError::OverBudget)?;
    let mut data = vec![0u8; n];
    r.read_exact(&mut data).await.map_err(ReadError::eof)?;
    Ok(Pkt::Data(data))
}

/// Why reading pkt-lines from a request failed.
#[allow(missing_docs)] // each variant's #[error] message documents it
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Malformed(#[from] Error),
    #[error("request header larger than git.max_request_bytes")]
    OverBudget,
    #[error("{0}")]
    Io(std::io::Error),
}

impl ReadError {
    fn eof(e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            Self::Malformed(Error::Truncated)
        } else {
            Self::Io(e)
        }
    }
}

/// Appends `data` as pkt-lines, split at [`MAX_DATA`].
pub fn write(out: &mut Vec<u8>, data: &[u8]) {
    for chunk in data.chunks(MAX_DATA) {
        out.extend_from_slice(format!("{:04x}", chunk.len() + 4).as_bytes());
        out.extend_from_slice(chunk);
    }
}

/// Appends a flush packet.
pub fn flush(out: &mut Vec<u8>) {
    out.extend_from_slice(b"0000");
}

/// Appends `data` on side-band `band`, split to fit.
pub fn sideband(out: &mut Vec<u8>, band: u8, data: &[u8]) {
    for chunk in data.chunks(MAX_DATA - 1) {
        out.extend_from_slice(format!("{:04x}", chunk.len() + 5).as_bytes());
        out.push(band);
        out.extend_from_slice(chunk);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Reads packets from `bytes` until an error or a response end.
    fn read_all(bytes: &[u8], mut budget: usize) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut r = bytes;
            while let Ok(pkt) = read(&mut r, &mut budget).await {
                if pkt == Pkt::ResponseEnd {
                    break;
                }
            }
        });
    }

    /// A receive-pack request's shape: commands, a flush, then pack bytes.
    fn stream() -> Vec<u8> {
        let mut out = Vec::new();
        write(&mut out, b"0000000000000000000000000000000000000000 1111111111111111111111111111111111111111 refs/heads/main\0report-status push-cert=1-ab\n");
        write(&mut out, b"push-cert\0push-cert=1-ab\n");
        write(&mut out, b"certificate version 0.1\n");
        write(&mut out, b"push-cert-end\n");
        flush(&mut out);
        out.extend_from_slice(b"PACK\0\0\0\x02\0\0\0\0");
        out
    }

    #[test]
    fn known_packets() {
        let mut out = Vec::new();
        write(&mut out, b"hello\n");
        flush(&mut out);
        assert_eq!(out, b"000ahello\n0000");
        let (pkt, rest) = split(&out).unwrap().unwrap();
        assert_eq!(pkt, Pkt::Data(&b"hello\n"[..]));
        assert_eq!(split(rest).unwrap().unwrap().0, Pkt::Flush);
        assert_eq!(split(b"000ahel").unwrap(), None);
        assert_eq!(split(b"0003").unwrap_err(), Error::Reserved(3));
        assert_eq!(split(b"fff1").unwrap_err(), Error::TooLong(0xfff1));
        assert!(matches!(split(b"00+1"), Err(Error::BadLength(_))));
    }

    proptest! {
        #[test]
        fn split_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut rest = &bytes[..];
            while let Ok(Some((_, tail))) = split(rest) {
                prop_assert!(tail.len() < rest.len());
                rest = tail;
            }
        }

        #[test]
        fn written_data_reads_back(data in proptest::collection::vec(any::<u8>(), 0..3 * MAX_DATA)) {
            let mut out = Vec::new();
            write(&mut out, &data);
            let mut rest = &out[..];
            let mut back = Vec::new();
            while let Some((Pkt::Data(d), tail)) = split(rest).unwrap() {
                back.extend_from_slice(d);
                rest = tail;
            }
            prop_assert_eq!(back, data);
        }

        #[test]
        fn mutated_streams_never_panic(bytes in crate::fuzz::mutated(stream()), budget in 0usize..400) {
            let mut rest = &bytes[..];
            while let Ok(Some((_, tail))) = split(rest) {
                prop_assert!(tail.len() < rest.len());
                rest = tail;
            }
            read_all(&bytes, budget);
        }

        #[test]
        fn read_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300), budget in 0usize..400) {
            read_all(&bytes, budget);
        }
    }
}

//! What peers send each other: gossip messages and the frames of the stream
//! protocols. Every decoder bounds sizes before allocating and returns an error,
//! never panics.

use libp2p::futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::git::Update;

/// Version byte in front of every gossip message.
/// 2: updates carry the certificates of an update's other signers.
const GOSSIP_VERSION: u8 = 2;

/// A ref update as gossiped: the repo, each ref with its old and new tip, the push
/// certificate, and when the announcing node accepted it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefUpdate {
    /// Repo token id.
    pub repo: u64,
    /// `(ref, old, new)`; zeros mean absent.
    pub refs: Vec<(String, [u8; 20], [u8; 20])>,
    /// The push certificate's text.
    pub cert: Vec<u8>,
    /// Unix milliseconds at which the announcing node accepted the push.
    pub announced_ms: u64,
    /// The certificates of the update's other signers (a ref rule asked several).
    pub cosigned: Vec<Vec<u8>>,
}

/// Why bytes from a peer were refused.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Larger than allowed.
    #[error("{what} of {len} bytes, more than {max}")]
    TooLarge {
        /// What was being read.
        what: &'static str,
        /// Its size.
        len: usize,
        /// The bound.
        max: usize,
    },
    /// Not what the protocol says.
    #[error("malformed {what}: {detail}")]
    Malformed {
        /// What was being read.
        what: &'static str,
        /// Why.
        detail: String,
    },
    /// The stream failed.
    #[error("stream: {0}")]
    Io(#[from] std::io::Error),
}

impl RefUpdate {
    /// Encodes for gossip.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![GOSSIP_VERSION];
        // Plain data with no maps or floats: encoding cannot fail.
        out.extend(postcard::to_stdvec(self).unwrap_or_default());
        out
    }

    /// Decodes a gossip message of at most `max` bytes.
    pub fn decode(bytes: &[u8], max: usize) -> Result<Self, Error> {
        if bytes.len() > max {
            return Err(Error::TooLarge {
                what: "gossip message",
                len: bytes.len(),
                max,
            });
        }
        let malformed = |detail: String| Error::Malformed {
            what: "gossip message",
            detail,
        };
        match bytes.split_first() {
            Some((&GOSSIP_VERSION, rest)) => {
                postcard::from_bytes(rest).map_err(|e| malformed(e.to_string()))
            }
            Some((v, _)) => Err(malformed(format!("unknown version {v}"))),
            None => Err(malformed("empty".into())),
        }
    }

    /// The update a replica applies: each ref must be one the certificate moves
    /// from `old` to `new`, which [`crate::git::Git::plan`] checks.
    pub fn into_update(self) -> Update {
        Update {
            repo: self.repo,
            cert: self.cert,
            cosigned: self.cosigned,
            claims: self
                .refs
                .into_iter()
                .map(|(name, _, new)| crate::git::replica::Claim { name, target: new })
                .collect(),
        }
    }
}

/// A request on the pack protocol: objects of `repo` the asker wants, and tips it has.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackRequest {
    /// Repo token id.
    pub repo: u64,
    /// Objects wanted.
    pub wants: Vec<[u8; 20]>,
    /// Tips the asker has.
    pub haves: Vec<[u8; 20]>,
}

/// A request on the sync protocol: the asker's digest of each repo it replicates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncRequest {
    /// `(repo, digest)`.
    pub repos: Vec<(u64, [u8; 32])>,
}

/// The answer: for every repo whose digest differs, the answerer's records as
/// updates (one per certificate).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncResponse {
    /// Updates, by repo.
    pub updates: Vec<Update>,
}

/// Largest request frame.
pub const MAX_REQUEST: usize = 4 << 20;
/// Largest sync response frame.
pub const MAX_SYNC_RESPONSE: usize = 64 << 20;

/// Writes `value` as one frame: a 4-byte big-endian length, then postcard.
pub async fn write_frame<T: Serialize>(
    io: &mut (impl AsyncWrite + Unpin),
    value: &T,
) -> Result<(), Error> {
    let body = postcard::to_stdvec(value).map_err(|e| Error::Malformed {
        what: "frame",
        detail: e.to_string(),
    })?;
    let len = u32::try_from(body.len()).map_err(|_| Error::TooLarge {
        what: "frame",
        len: body.len(),
        max: u32::MAX as usize,
    })?;
    io.write_all(&len.to_be_bytes()).await?;
    io.write_all(&body).await?;
    io.flush().await?;
    Ok(())
}

/// Reads one frame of at most `max` bytes.
pub async fn read_frame<T: DeserializeOwned>(
    io: &mut (impl AsyncRead + Unpin),
    what: &'static str,
    max: usize,
) -> Result<T, Error> {
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(Error::TooLarge { what, len, max });
    }
    let mut body = vec![0u8; len];
    io.read_exact(&mut body).await?;
    postcard::from_bytes(&body).map_err(|e| Error::Malformed {
        what,
        detail: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use proptest::prelude::*;

    use super::*;

    #[test]
    fn gossip_round_trips_and_bounds() {
        let m = RefUpdate {
            repo: 7,
            refs: vec![("refs/heads/main".into(), [1; 20], [2; 20])],
            cert: b"certificate".to_vec(),
            announced_ms: 5,
            cosigned: vec![b"other".to_vec()],
        };
        let bytes = m.encode();
        assert_eq!(RefUpdate::decode(&bytes, 1024).unwrap(), m);
        assert!(matches!(
            RefUpdate::decode(&bytes, 10),
            Err(Error::TooLarge { .. })
        ));
        assert!(RefUpdate::decode(&[9, 1, 2], 1024).is_err());
        assert!(RefUpdate::decode(&[], 1024).is_err());
    }

    #[test]
    fn frames_round_trip_and_bound() {
        libp2p::futures::executor::block_on(async {
            let req = PackRequest {
                repo: 1,
                wants: vec![[3; 20]],
                haves: vec![],
            };
            let mut buf = Vec::new();
            write_frame(&mut buf, &req).await.unwrap();
            let back: PackRequest = read_frame(&mut &buf[..], "pack request", 1024)
                .await
                .unwrap();
            assert_eq!(back, req);
            let err = read_frame::<PackRequest>(&mut &buf[..], "pack request", 4)
                .await
                .unwrap_err();
            assert!(err.to_string().contains("more than 4"), "{err}");
            // A huge length prefix is refused before anything is allocated.
            let huge = [0xff, 0xff, 0xff, 0xff];
            assert!(
                read_frame::<SyncResponse>(&mut &huge[..], "sync", MAX_SYNC_RESPONSE)
                    .await
                    .is_err()
            );
        });
    }

    proptest! {
        #[test]
        fn mutated_updates_decode_to_what_they_encode_or_are_errors(bytes in crate::fuzz::mutated(RefUpdate {
            repo: 7,
            refs: vec![("refs/heads/main".into(), [1; 20], [2; 20]), ("refs/tags/v1".into(), [0; 20], [3; 20])],
            cert: b"certificate version 0.1".to_vec(),
            announced_ms: 5,
            cosigned: vec![b"other".to_vec()],
        }.encode())) {
            if let Ok(m) = RefUpdate::decode(&bytes, 1024) {
                prop_assert_eq!(RefUpdate::decode(&m.encode(), 1024).unwrap(), m);
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = RefUpdate::decode(&bytes, 1024);
            libp2p::futures::executor::block_on(async {
                let _ = read_frame::<SyncResponse>(&mut &bytes[..], "sync", 1024).await;
                let _ = read_frame::<PackRequest>(&mut &bytes[..], "pack", 1024).await;
            });
        }
    }
}

//! The node's database: one rocksdb under `<data dir>/db`, one column family per kind
//! of record.
//!
//! * `meta` — schema version, the deployment the data belongs to, and the last DNS
//!   packet this node published (republished after a restart).
//! * `acl` — ACL checkpoints: block number (big-endian) and hash → a [`Checkpoint`]
//!   (the ACL snapshot `chain` writes) as postcard. The
//!   newest is where sync resumes; older ones (a bounded window) are the undo log a
//!   deep reorg rolls back to.
//! * `refs` — per repo and ref, the [`RefRecord`] of the accepted push that set its
//!   tip: key repo id (big-endian) then ref name.
//! * `certs` — push certificates by SHA-256 of their text.
//! * `cosigned` — for an update several identities signed (a ref rule asked it): the
//!   certificate that completed it → the SHA-256 of each other certificate.
//! * `receipts` — for a push that asked for a quorum: its certificate's SHA-256 → the
//!   receipts of the replicas that held it, as the `git` module encodes them.
//! * `pending` — updates waiting for more signatures: key repo id (big-endian) then
//!   the update's 32-byte key, as the `git` module encodes them.
//! * `deploy` — deployments by id, as the `deploy` module encodes them (secrets sealed).
//! * `usage` — inference usage: key caller address then model name.
//!
//! Writes that must land together go in one write batch with a synced WAL, so a crash
//! leaves either the old or the new checkpoint, never a mix.

use std::path::Path;

use rocksdb::{
    ColumnFamilyDescriptor, DB, Direction, IteratorMode, Options, WriteBatch, WriteOptions,
};

use sha2::Digest;

/// A state at a block, kept as an ACL checkpoint (`chain` stores the ACL snapshot).
pub trait Checkpoint: serde::Serialize + serde::de::DeserializeOwned {
    /// The block the state is at (number, hash), if any.
    fn block(&self) -> Option<(u64, [u8; 32])>;
}

/// A stored checkpoint's block: number and hash.
pub type Block = (u64, [u8; 32]);

const CF_META: &str = "meta";
const CF_ACL: &str = "acl";
const CF_REFS: &str = "refs";
const CF_CERTS: &str = "certs";
const CF_DEPLOY: &str = "deploy";
const CF_USAGE: &str = "usage";
const CF_COSIGNED: &str = "cosigned";
const CF_PENDING: &str = "pending";
const CF_RECEIPTS: &str = "receipts";
const CF_DNS_KEPT: &str = "dns_kept";
const COLUMN_FAMILIES: [&str; 10] = [
    CF_META,
    CF_ACL,
    CF_REFS,
    CF_CERTS,
    CF_DEPLOY,
    CF_USAGE,
    CF_COSIGNED,
    CF_PENDING,
    CF_RECEIPTS,
    CF_DNS_KEPT,
];
/// 2: checkpoint keys are block number and hash.
const SCHEMA_VERSION: &[u8] = b"2";
const KEY_SCHEMA: &[u8] = b"schema";
/// The encoding of the ACL snapshots in `acl`. Checkpoints are a cache of the chain:
/// a node that finds another format drops them and syncs again from the deployment
/// block, keeping everything else. 2: repos carry a default branch and ref rules.
const ACL_FORMAT: &[u8] = b"2";
const KEY_ACL_FORMAT: &[u8] = b"acl-format";
const KEY_DEPLOYMENT: &[u8] = b"deployment";
const KEY_DNS_PACKET: &[u8] = b"dns-packet";
/// Largest encoded snapshot accepted when reading back (a guard against a corrupt record).
const MAX_SNAPSHOT_BYTES: usize = 1 << 30;

/// Raw key–value records of a column family.
pub type Records = Vec<(Vec<u8>, Vec<u8>)>;
/// Pending updates of a repo: each one's key and record.
pub type PendingRecords = Vec<([u8; 32], Vec<u8>)>;

/// Why a ref has its tip: the accepted push that set it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RefRecord {
    /// The tip (a SHA-1 object id).
    pub target: [u8; 20],
    /// SHA-256 of the push certificate, a key of the `certs` column family.
    pub cert: [u8; 32],
    /// The pushing identity.
    pub identity: u64,
    /// Its handle at the time of the push.
    pub handle: String,
    /// Fingerprint of the signing key.
    pub key: String,
    /// Unix time on the certificate's `pusher` line.
    pub timestamp: u64,
}

impl RefRecord {
    /// Whether this records a deletion: the ref is absent, and the certificate that
    /// deleted it still orders later updates.
    pub fn is_tombstone(&self) -> bool {
        self.target == [0; 20]
    }
}

/// What went wrong with the database.
#[allow(missing_docs)] // each variant's #[error] message documents it
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("database error: {0}")]
    Db(#[from] rocksdb::Error),
    #[error(
        "the database at {path} is locked by another process; is a node already running on this data dir? ({source})"
    )]
    Locked {
        path: String,
        source: rocksdb::Error,
    },
    #[error(
        "the database at {path} has schema version {found}, this node reads version {known}; run the node version that wrote it, or move it aside and restart (the ACL is rebuilt from the chain; repos then have no push records)"
    )]
    Schema {
        path: String,
        found: String,
        known: String,
    },
    #[error("corrupt {what} record: {detail}")]
    Corrupt { what: &'static str, detail: String },
    #[error(
        "the database belongs to deployment {stored}, not {configured}; use another data dir or remove {path}"
    )]
    OtherDeployment {
        stored: String,
        configured: String,
        path: String,
    },
}

/// The node's database handle; cheap to share behind an `Arc`.
pub struct Store {
    db: DB,
    /// Whether the ACL checkpoints are in [`ACL_FORMAT`] (a read-only open of an
    /// older node's database finds them not to be).
    acl_current: bool,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.db.path())
            .finish()
    }
}

impl Store {
    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: &Path) -> Result<Self, Error> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        let cfs = COLUMN_FAMILIES.map(|name| ColumnFamilyDescriptor::new(name, Options::default()));
        let db = DB::open_cf_descriptors(&opts, path, cfs).map_err(|source| {
            if source.to_string().contains("lock") {
                Error::Locked {
                    path: path.display().to_string(),
                    source,
                }
            } else {
                Error::Db(source)
            }
        })?;
        let store = Self {
            db,
            acl_current: true,
        };
        if !store.has_schema(path)? {
            store
                .db
                .put_cf(store.cf(CF_META), KEY_SCHEMA, SCHEMA_VERSION)?;
        }
        if !store.acl_format_is_current()? {
            let had = store.checkpoint_blocks()?.len();
            store.clear_checkpoints()?;
            store
                .db
                .put_cf(store.cf(CF_META), KEY_ACL_FORMAT, ACL_FORMAT)?;
            if had > 0 {
                tracing::info!(target: "hanzo::store", checkpoints = had, "dropped ACL checkpoints an older node wrote; the ACL is rebuilt from the chain");
            }
        }
        Ok(store)
    }

    /// Whether the database at `path` records a schema version (a new one does not),
    /// refusing a version other than this node's.
    fn has_schema(&self, path: &Path) -> Result<bool, Error> {
        match self.db.get_cf(self.cf(CF_META), KEY_SCHEMA)? {
            None => Ok(false),
            Some(v) if v == SCHEMA_VERSION => Ok(true),
            Some(v) => Err(Error::Schema {
                path: path.display().to_string(),
                found: String::from_utf8_lossy(&v).into_owned(),
                known: String::from_utf8_lossy(SCHEMA_VERSION).into_owned(),
            }),
        }
    }

    /// Writes every column family's memtable and the write-ahead log to disk (a stop
    /// does this, so the next start replays nothing).
    pub fn flush(&self) -> Result<(), Error> {
        for name in COLUMN_FAMILIES {
            self.db.flush_cf(self.cf(name))?;
        }
        self.db.flush_wal(true)?;
        Ok(())
    }

    /// Opens the database read-only, beside a node that may be running on it.
    pub fn open_read_only(path: &Path) -> Result<Self, Error> {
        let db = DB::open_cf_for_read_only(&Options::default(), path, COLUMN_FAMILIES, false)?;
        let mut store = Self {
            db,
            acl_current: true,
        };
        store.has_schema(path)?;
        store.acl_current = store.acl_format_is_current()?;
        Ok(store)
    }

    fn acl_format_is_current(&self) -> Result<bool, Error> {
        Ok(self
            .db
            .get_cf(self.cf(CF_META), KEY_ACL_FORMAT)?
            .is_some_and(|v| v == ACL_FORMAT))
    }

    fn check_acl_format(&self) -> Result<(), Error> {
        if self.acl_current {
            return Ok(());
        }
        Err(Error::Corrupt {
            what: "acl",
            detail: "the ACL checkpoints were written by an older node; start this node once to rebuild them from the chain".into(),
        })
    }

    fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        // Every name used here is in COLUMN_FAMILIES, which `open` creates.
        #[allow(clippy::expect_used)]
        self.db
            .cf_handle(name)
            .expect("column family created at open")
    }

    /// Binds the database to a deployment (`chain id:registry address`), refusing one
    /// that holds another deployment's data.
    pub fn bind_deployment(&self, id: &str) -> Result<(), Error> {
        match self.db.get_cf(self.cf(CF_META), KEY_DEPLOYMENT)? {
            None => Ok(self.db.put_cf(self.cf(CF_META), KEY_DEPLOYMENT, id)?),
            Some(stored) if stored == id.as_bytes() => Ok(()),
            Some(stored) => Err(Error::OtherDeployment {
                stored: String::from_utf8_lossy(&stored).into_owned(),
                configured: id.to_owned(),
                path: self.db.path().display().to_string(),
            }),
        }
    }

    /// The last signed DNS packet this node published (pkarr's encoding).
    pub fn dns_packet(&self) -> Result<Option<Vec<u8>>, Error> {
        Ok(self.db.get_cf(self.cf(CF_META), KEY_DNS_PACKET)?)
    }

    /// Records the signed DNS packet just published.
    pub fn put_dns_packet(&self, packet: &[u8]) -> Result<(), Error> {
        let mut batch = WriteBatch::default();
        batch.put_cf(self.cf(CF_META), KEY_DNS_PACKET, packet);
        self.write_synced(batch)
    }

    /// The other operators' DNS packets this node keeps alive: node key and relay
    /// payload (signature, timestamp, packet), unverified.
    pub fn kept_dns_packets(&self) -> Result<Records, Error> {
        self.all(CF_DNS_KEPT)
    }

    /// Keeps `payload` as node key `key`'s DNS packet (synced).
    pub fn put_kept_dns_packet(&self, key: &[u8; 32], payload: &[u8]) -> Result<(), Error> {
        let mut batch = WriteBatch::default();
        batch.put_cf(self.cf(CF_DNS_KEPT), key, payload);
        self.write_synced(batch)
    }

    /// Forgets node key `key`'s kept DNS packet (synced).
    pub fn remove_kept_dns_packet(&self, key: &[u8]) -> Result<(), Error> {
        let mut batch = WriteBatch::default();
        batch.delete_cf(self.cf(CF_DNS_KEPT), key);
        self.write_synced(batch)
    }

    /// The newest ACL checkpoint.
    pub fn latest_checkpoint<C: Checkpoint>(&self) -> Result<Option<C>, Error> {
        self.check_acl_format()?;
        let mut iter = self.db.iterator_cf(self.cf(CF_ACL), IteratorMode::End);
        iter.next()
            .transpose()?
            .map(|(_, v)| decode(&v))
            .transpose()
    }

    /// The blocks of the stored ACL checkpoints, newest first (read from the keys;
    /// no state is decoded).
    pub fn checkpoint_blocks(&self) -> Result<Vec<Block>, Error> {
        self.db
            .iterator_cf(self.cf(CF_ACL), IteratorMode::End)
            .map(|r| block_of_key(&r?.0))
            .collect()
    }

    /// The ACL checkpoint at `block`.
    pub fn checkpoint<C: Checkpoint>(&self, block: Block) -> Result<Option<C>, Error> {
        self.check_acl_format()?;
        self.db
            .get_cf(self.cf(CF_ACL), checkpoint_key(block))?
            .map(|v| decode(&v))
            .transpose()
    }

    /// Writes `snapshot` as the newest checkpoint, deletes checkpoints after it (a
    /// rollback) and keeps at most `keep` in all.
    pub fn put_checkpoint(&self, snapshot: &impl Checkpoint, keep: usize) -> Result<(), Error> {
        let Some(block) = snapshot.block() else {
            return Err(Error::Corrupt {
                what: "acl",
                detail: "a checkpoint needs a block".into(),
            });
        };
        let key = checkpoint_key(block);
        let value = postcard::to_stdvec(snapshot).map_err(|e| Error::Corrupt {
            what: "acl",
            detail: e.to_string(),
        })?;
        let cf = self.cf(CF_ACL);
        let mut batch = WriteBatch::default();
        // Point deletes, not range deletes: a range tombstone per block piles up in
        // the memtable until it is flushed, and every read rebuilds its fragment list
        // (the soak saw ~27 KB of heap per block). Checkpoints of later blocks (a
        // rollback), at most `keep` of them:
        let later = (block.0 + 1).to_be_bytes();
        for item in self
            .db
            .iterator_cf(cf, IteratorMode::From(&later, Direction::Forward))
        {
            batch.delete_cf(cf, item?.0);
        }
        batch.put_cf(cf, key, value);
        // Checkpoints older than the newest `keep` (this one included) go.
        let older = self
            .db
            .iterator_cf(cf, IteratorMode::From(&key, Direction::Reverse))
            .filter(|r| r.as_ref().map_or(true, |(k, _)| k[..] != key[..]));
        for item in older.skip(keep.max(1) - 1) {
            batch.delete_cf(cf, item?.0);
        }
        self.write_synced(batch)
    }

    /// The ref records of `repo`, by ref name.
    pub fn refs(&self, repo: u64) -> Result<Vec<(String, RefRecord)>, Error> {
        let prefix = repo.to_be_bytes();
        let mut out = Vec::new();
        for item in self.db.iterator_cf(
            self.cf(CF_REFS),
            IteratorMode::From(&prefix, Direction::Forward),
        ) {
            let (key, value) = item?;
            let Some(name) = key.strip_prefix(&prefix[..]) else {
                break;
            };
            let corrupt = |detail: String| Error::Corrupt {
                what: "refs",
                detail,
            };
            let name = String::from_utf8(name.to_vec()).map_err(|e| corrupt(e.to_string()))?;
            let record = postcard::from_bytes(&value).map_err(|e| corrupt(e.to_string()))?;
            out.push((name, record));
        }
        Ok(out)
    }

    /// Records an accepted push to `repo` in one synced write: its certificate, the
    /// certificates of the other signers of the same update (`cosigned`), the
    /// receipts of the replicas that held it (`receipts`, encoded; empty: none), the
    /// new record of each ref it moved (a tombstone for a deleted ref), and the end of
    /// the pending update it completed, if any.
    pub fn record_push(
        &self,
        repo: u64,
        (cert, cosigned, receipts): (&[u8], &[Vec<u8>], &[u8]),
        updates: &[(String, RefRecord)],
        completed: Option<&[u8; 32]>,
    ) -> Result<(), Error> {
        let mut batch = WriteBatch::default();
        let hash: [u8; 32] = sha2::Sha256::digest(cert).into();
        batch.put_cf(self.cf(CF_CERTS), hash, cert);
        if !receipts.is_empty() {
            batch.put_cf(self.cf(CF_RECEIPTS), hash, receipts);
        }
        if !cosigned.is_empty() {
            let mut others = Vec::with_capacity(32 * cosigned.len());
            for text in cosigned {
                let h: [u8; 32] = sha2::Sha256::digest(text).into();
                batch.put_cf(self.cf(CF_CERTS), h, text);
                others.extend_from_slice(&h);
            }
            batch.put_cf(self.cf(CF_COSIGNED), hash, others);
        }
        for (name, record) in updates {
            let mut key = repo.to_be_bytes().to_vec();
            key.extend_from_slice(name.as_bytes());
            let value = postcard::to_stdvec(record).map_err(|e| Error::Corrupt {
                what: "refs",
                detail: e.to_string(),
            })?;
            batch.put_cf(self.cf(CF_REFS), key, value);
        }
        if let Some(key) = completed {
            batch.delete_cf(self.cf(CF_PENDING), pending_key(repo, key));
        }
        self.write_synced(batch)
    }

    /// The texts of the other certificates that signed the update certificate `hash`
    /// completed (none for an update one identity signed).
    pub fn cosigned(&self, hash: &[u8; 32]) -> Result<Vec<Vec<u8>>, Error> {
        let Some(list) = self.db.get_cf(self.cf(CF_COSIGNED), hash)? else {
            return Ok(Vec::new());
        };
        let corrupt = |detail: String| Error::Corrupt {
            what: "cosigned",
            detail,
        };
        let (chunks, rest) = list.as_chunks::<32>();
        if !rest.is_empty() {
            return Err(corrupt(format!("{} bytes", list.len())));
        }
        chunks
            .iter()
            .map(|h| {
                self.cert(h)?
                    .ok_or_else(|| corrupt(format!("certificate {} missing", hex::encode(h))))
            })
            .collect()
    }

    /// The receipts recorded with the push of certificate `hash` (encoded), if any.
    pub fn receipts(&self, hash: &[u8; 32]) -> Result<Option<Vec<u8>>, Error> {
        Ok(self.db.get_cf(self.cf(CF_RECEIPTS), hash)?)
    }

    /// Stores a certificate by its SHA-256 (a replica that holds an update before it
    /// applies it).
    pub fn put_cert(&self, cert: &[u8]) -> Result<(), Error> {
        let mut batch = WriteBatch::default();
        let hash: [u8; 32] = sha2::Sha256::digest(cert).into();
        batch.put_cf(self.cf(CF_CERTS), hash, cert);
        self.write_synced(batch)
    }

    /// Stores pending update `key` of `repo` as `value`, with the certificate that
    /// just signed it, in one synced write.
    pub fn put_pending(
        &self,
        repo: u64,
        key: &[u8; 32],
        value: &[u8],
        cert: &[u8],
    ) -> Result<(), Error> {
        let mut batch = WriteBatch::default();
        let hash: [u8; 32] = sha2::Sha256::digest(cert).into();
        batch.put_cf(self.cf(CF_CERTS), hash, cert);
        batch.put_cf(self.cf(CF_PENDING), pending_key(repo, key), value);
        self.write_synced(batch)
    }

    /// The pending updates of `repo`: key and value.
    pub fn pending(&self, repo: u64) -> Result<PendingRecords, Error> {
        let prefix = repo.to_be_bytes();
        let mut out = Vec::new();
        for item in self.db.iterator_cf(
            self.cf(CF_PENDING),
            IteratorMode::From(&prefix, Direction::Forward),
        ) {
            let (key, value) = item?;
            let Some(rest) = key.strip_prefix(&prefix[..]) else {
                break;
            };
            let key: [u8; 32] = rest.try_into().map_err(|_| Error::Corrupt {
                what: "pending",
                detail: format!("key of {} bytes", key.len()),
            })?;
            out.push((key, value.to_vec()));
        }
        Ok(out)
    }

    /// Forgets pending update `key` of `repo` (it expired).
    pub fn remove_pending(&self, repo: u64, key: &[u8; 32]) -> Result<(), Error> {
        let mut batch = WriteBatch::default();
        batch.delete_cf(self.cf(CF_PENDING), pending_key(repo, key));
        self.write_synced(batch)
    }

    /// Forgets every ref record and pending update of `repo` (its token was burned).
    pub fn remove_repo(&self, repo: u64) -> Result<(), Error> {
        let mut batch = WriteBatch::default();
        let (from, to) = (repo.to_be_bytes(), repo.wrapping_add(1).to_be_bytes());
        batch.delete_range_cf(self.cf(CF_REFS), &from[..], &to[..]);
        batch.delete_range_cf(self.cf(CF_PENDING), &from[..], &to[..]);
        self.write_synced(batch)
    }

    fn write_synced(&self, batch: WriteBatch) -> Result<(), Error> {
        let mut opts = WriteOptions::default();
        opts.set_sync(true);
        Ok(self.db.write_opt(batch, &opts)?)
    }

    /// The push certificate whose SHA-256 is `hash`.
    pub fn cert(&self, hash: &[u8; 32]) -> Result<Option<Vec<u8>>, Error> {
        Ok(self.db.get_cf(self.cf(CF_CERTS), hash)?)
    }

    /// Every stored deployment: id and record.
    pub fn deployments(&self) -> Result<Vec<(String, Vec<u8>)>, Error> {
        self.db
            .iterator_cf(self.cf(CF_DEPLOY), IteratorMode::Start)
            .map(|item| {
                let (k, v) = item?;
                Ok((String::from_utf8_lossy(&k).into_owned(), v.into_vec()))
            })
            .collect()
    }

    /// The record of deployment `id`.
    pub fn deployment(&self, id: &str) -> Result<Option<Vec<u8>>, Error> {
        Ok(self.db.get_cf(self.cf(CF_DEPLOY), id)?)
    }

    /// Writes the record of deployment `id` (synced).
    pub fn put_deployment(&self, id: &str, record: &[u8]) -> Result<(), Error> {
        let mut batch = WriteBatch::default();
        batch.put_cf(self.cf(CF_DEPLOY), id, record);
        self.write_synced(batch)
    }

    /// Forgets deployment `id` (synced).
    pub fn remove_deployment(&self, id: &str) -> Result<(), Error> {
        let mut batch = WriteBatch::default();
        batch.delete_cf(self.cf(CF_DEPLOY), id);
        self.write_synced(batch)
    }

    /// Every inference usage record: key and value.
    pub fn usage(&self) -> Result<Records, Error> {
        self.all(CF_USAGE)
    }

    /// Every key and value of column family `cf`, in key order.
    fn all(&self, cf: &str) -> Result<Records, Error> {
        self.db
            .iterator_cf(self.cf(cf), IteratorMode::Start)
            .map(|item| {
                let (k, v) = item?;
                Ok((k.into_vec(), v.into_vec()))
            })
            .collect()
    }

    /// Writes a usage record (not synced: a crash may lose the last few calls' counts).
    pub fn put_usage(&self, key: &[u8], value: &[u8]) -> Result<(), Error> {
        Ok(self.db.put_cf(self.cf(CF_USAGE), key, value)?)
    }

    /// Deletes every ACL checkpoint (a rebuild from the deployment block follows).
    pub fn clear_checkpoints(&self) -> Result<(), Error> {
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(self.cf(CF_ACL), &[][..], &KEY_END[..]);
        let mut opts = WriteOptions::default();
        opts.set_sync(true);
        Ok(self.db.write_opt(batch, &opts)?)
    }
}

fn pending_key(repo: u64, key: &[u8; 32]) -> [u8; 40] {
    let mut out = [0u8; 40];
    out[..8].copy_from_slice(&repo.to_be_bytes());
    out[8..].copy_from_slice(key);
    out
}

/// Checkpoint keys: block number (big-endian, so they sort by number), then block hash.
fn checkpoint_key((number, hash): Block) -> [u8; 40] {
    let mut key = [0u8; 40];
    key[..8].copy_from_slice(&number.to_be_bytes());
    key[8..].copy_from_slice(&hash);
    key
}

/// Past every checkpoint key.
const KEY_END: [u8; 41] = [0xff; 41];

fn block_of_key(key: &[u8]) -> Result<Block, Error> {
    let corrupt = || Error::Corrupt {
        what: "acl",
        detail: format!("key of {} bytes", key.len()),
    };
    let (number, hash) = key.split_first_chunk::<8>().ok_or_else(corrupt)?;
    let hash: [u8; 32] = hash.try_into().map_err(|_| corrupt())?;
    Ok((u64::from_be_bytes(*number), hash))
}

fn decode<C: Checkpoint>(bytes: &[u8]) -> Result<C, Error> {
    if bytes.len() > MAX_SNAPSHOT_BYTES {
        return Err(Error::Corrupt {
            what: "acl",
            detail: format!("{} bytes", bytes.len()),
        });
    }
    postcard::from_bytes(bytes).map_err(|e| Error::Corrupt {
        what: "acl",
        detail: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acl::{BlockRef, Snapshot};

    fn at(number: u64) -> Snapshot {
        Snapshot {
            block: Some(BlockRef {
                number,
                hash: [u8::try_from(number).unwrap(); 32].into(),
            }),
            events_applied: number,
            ..Default::default()
        }
    }

    #[test]
    fn checkpoints_keep_a_window_and_roll_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert!(store.latest_checkpoint::<Snapshot>().unwrap().is_none());
        for n in 1..=10 {
            store.put_checkpoint(&at(n), 4).unwrap();
        }
        let numbers: Vec<u64> = store
            .checkpoint_blocks()
            .unwrap()
            .iter()
            .map(|b| b.0)
            .collect();
        assert_eq!(numbers, vec![10, 9, 8, 7]);
        // A rollback to 8 drops 9 and 10.
        store.put_checkpoint(&at(8), 4).unwrap();
        assert_eq!(
            store
                .latest_checkpoint::<Snapshot>()
                .unwrap()
                .unwrap()
                .events_applied,
            8
        );
        assert_eq!(store.checkpoint_blocks().unwrap().len(), 2);
        let seven = store.checkpoint_blocks().unwrap()[1];
        let seven: Snapshot = store.checkpoint(seven).unwrap().unwrap();
        assert_eq!(seven.events_applied, 7);
        assert!(
            store.put_checkpoint(&Snapshot::default(), 4).is_err(),
            "no block, no checkpoint"
        );
        drop(store);
        // Survives a reopen.
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(
            store
                .latest_checkpoint::<Snapshot>()
                .unwrap()
                .unwrap()
                .block
                .unwrap()
                .number,
            8
        );
        store.clear_checkpoints().unwrap();
        assert!(store.latest_checkpoint::<Snapshot>().unwrap().is_none());
    }

    #[test]
    fn an_older_nodes_checkpoints_are_dropped_and_the_rest_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.put_checkpoint(&at(3), 4).unwrap();
        store.put_usage(b"caller", b"usage").unwrap();
        // As a node before ACL format 2 left it: no format recorded.
        store
            .db
            .delete_cf(store.cf(CF_META), KEY_ACL_FORMAT)
            .unwrap();
        drop(store);
        let ro = Store::open_read_only(dir.path()).unwrap();
        let err = ro.latest_checkpoint::<Snapshot>().unwrap_err();
        assert!(err.to_string().contains("start this node once"), "{err}");
        drop(ro);
        let store = Store::open(dir.path()).unwrap();
        assert!(store.latest_checkpoint::<Snapshot>().unwrap().is_none());
        assert_eq!(store.usage().unwrap().len(), 1, "other records are kept");
        store.put_checkpoint(&at(4), 4).unwrap();
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(
            store.checkpoint_blocks().unwrap().len(),
            1,
            "format 2 stays"
        );
    }

    #[test]
    fn second_open_is_refused_with_a_hint_and_read_only_works() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.put_checkpoint(&at(3), 4).unwrap();
        let err = Store::open(dir.path()).unwrap_err();
        assert!(err.to_string().contains("already running"), "{err}");
        let ro = Store::open_read_only(dir.path()).unwrap();
        let at3: Snapshot = ro.latest_checkpoint().unwrap().unwrap();
        assert_eq!(at3.events_applied, 3);
    }

    #[test]
    fn other_schema_version_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store
            .db
            .put_cf(store.cf(CF_META), KEY_SCHEMA, b"1")
            .unwrap();
        drop(store);
        let err = Store::open(dir.path()).unwrap_err();
        assert!(matches!(err, Error::Schema { .. }), "{err}");
        let err = Store::open_read_only(dir.path()).unwrap_err();
        assert!(matches!(err, Error::Schema { .. }), "{err}");
        assert!(
            err.to_string().contains("move it aside and restart"),
            "{err}"
        );
    }

    #[test]
    fn deployment_binding_refuses_another_deployment() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.bind_deployment("31337:0xabc").unwrap();
        store.bind_deployment("31337:0xabc").unwrap();
        assert!(matches!(
            store.bind_deployment("1:0xdef"),
            Err(Error::OtherDeployment { .. })
        ));
    }

    #[test]
    fn push_records_per_repo() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let record = |t: u8| RefRecord {
            target: [t; 20],
            cert: sha2::Sha256::digest(b"cert").into(),
            identity: 1,
            handle: "alice".into(),
            key: "SHA256:x".into(),
            timestamp: 5,
        };
        store
            .record_push(
                1,
                (b"cert", &[], &[]),
                &[
                    ("refs/heads/a".into(), record(1)),
                    ("refs/heads/b".into(), record(2)),
                ],
                None,
            )
            .unwrap();
        store
            .record_push(
                2,
                (b"cert", &[], &[]),
                &[("refs/heads/a".into(), record(3))],
                None,
            )
            .unwrap();
        store
            .record_push(
                1,
                (b"cert", &[], &[]),
                &[("refs/heads/b".into(), record(0))],
                None,
            )
            .unwrap();
        assert_eq!(
            store.refs(1).unwrap(),
            vec![
                ("refs/heads/a".into(), record(1)),
                ("refs/heads/b".into(), record(0))
            ]
        );
        assert!(store.refs(1).unwrap()[1].1.is_tombstone());
        assert_eq!(store.refs(2).unwrap()[0].1, record(3));
        store.remove_repo(1).unwrap();
        assert!(store.refs(1).unwrap().is_empty());
        assert_eq!(store.refs(2).unwrap().len(), 1);
        assert!(store.refs(3).unwrap().is_empty());
        assert_eq!(store.cert(&record(1).cert).unwrap().unwrap(), b"cert");
    }

    #[test]
    fn pending_updates_end_with_the_push_that_completes_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store
            .put_pending(1, &[7; 32], b"first", b"alice's")
            .unwrap();
        store.put_pending(2, &[7; 32], b"other repo", b"x").unwrap();
        store
            .put_pending(1, &[7; 32], b"second", b"carol's")
            .unwrap();
        assert_eq!(
            store.pending(1).unwrap(),
            vec![([7; 32], b"second".to_vec())]
        );
        let record = RefRecord {
            target: [1; 20],
            cert: sha2::Sha256::digest(b"bob's").into(),
            identity: 2,
            handle: "bob".into(),
            key: "SHA256:b".into(),
            timestamp: 5,
        };
        let others = [b"alice's".to_vec(), b"carol's".to_vec()];
        store
            .record_push(
                1,
                (b"bob's", &others, b"receipts"),
                &[("refs/heads/main".into(), record.clone())],
                Some(&[7; 32]),
            )
            .unwrap();
        assert!(store.pending(1).unwrap().is_empty());
        assert_eq!(store.pending(2).unwrap().len(), 1);
        assert_eq!(store.cosigned(&record.cert).unwrap(), others);
        assert_eq!(
            store.receipts(&record.cert).unwrap().as_deref(),
            Some(&b"receipts"[..])
        );
        assert!(store.cosigned(&[0; 32]).unwrap().is_empty());
        store.remove_repo(2).unwrap();
        assert!(store.pending(2).unwrap().is_empty());
    }

    #[test]
    fn corrupt_record_is_an_error_not_a_panic() {
        assert!(matches!(
            decode::<Snapshot>(&[0xff; 7]),
            Err(Error::Corrupt { .. })
        ));
    }
}

//! The bare repositories on disk, through gix: creation, ref listing, receiving a
//! pack into a quarantine, checking it, and moving refs with compare-and-swap.
//!
//! Everything here blocks; callers run it on the blocking pool.

use std::{
    collections::{HashMap, HashSet},
    io::{self, BufRead, Read},
    path::{Path, PathBuf},
    sync::atomic::AtomicBool,
};

use gix::{
    ObjectId, Repository,
    objs::{CommitRefIter, Kind, TagRefIter, TreeRefIter},
    refs::{
        Target,
        transaction::{Change, LogChange, PreviousValue, RefEdit, RefLog},
    },
};
use tracing::{info, warn};

use super::{Error, cert::Command};
use crate::{acl::RepoId, store::RefRecord};

const TARGET: &str = "hanzo::git";
/// Largest single object (or delta result) accepted while indexing a pack.
const MAX_OBJECT_BYTES: usize = 1 << 30;
const QUARANTINE_PREFIX: &str = "incoming-";
const SHA1: gix::hash::Kind = gix::hash::Kind::Sha1;

fn internal(context: &str, e: impl std::fmt::Display) -> Error {
    Error::Internal(format!("{context}: {e}"))
}

/// The directory of repo `id` under `root`.
pub fn path(root: &Path, id: RepoId) -> PathBuf {
    root.join(format!("{id}.git"))
}

/// The token ids of the repos under `root`.
pub fn on_disk(root: &Path) -> Vec<RepoId> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.strip_suffix(".git")?.parse().ok())
        .collect()
}

/// Creates the bare repo `id` under `root` unless it exists; new repos start with
/// `HEAD` at `refs/heads/main`. Creation happens in a temporary directory renamed
/// into place, so a crash never leaves half a repo.
pub fn ensure(root: &Path, id: RepoId) -> Result<PathBuf, Error> {
    let dir = path(root, id);
    if dir.exists() {
        return Ok(dir);
    }
    std::fs::create_dir_all(root).map_err(|e| internal("create repos dir", e))?;
    let tmp = tempfile::Builder::new()
        .prefix(".init-")
        .tempdir_in(root)
        .map_err(|e| internal("create temp dir", e))?;
    gix::init_bare(tmp.path()).map_err(|e| internal("init bare repo", e))?;
    std::fs::write(tmp.path().join("HEAD"), "ref: refs/heads/main\n")
        .map_err(|e| internal("write HEAD", e))?;
    let tmp = tmp.keep();
    if let Err(e) = std::fs::rename(&tmp, &dir) {
        let _ = std::fs::remove_dir_all(&tmp);
        if !dir.exists() {
            return Err(internal("move new repo into place", e));
        }
    }
    info!(target: TARGET, repo = id, path = %dir.display(), "created bare repo");
    Ok(dir)
}

/// The repo at `dir`, with an object cache.
pub fn open(dir: &Path) -> Result<Repository, Error> {
    let mut repo = gix::open(dir).map_err(|e| internal("open repo", e))?;
    repo.object_cache_size_if_unset(16 << 20);
    Ok(repo)
}

/// Every ref of the repo at `dir` pointing at an object, sorted by name.
pub fn refs(dir: &Path) -> Result<Vec<(String, ObjectId)>, Error> {
    let repo = open(dir)?;
    list_refs(&repo)
}

fn list_refs(repo: &Repository) -> Result<Vec<(String, ObjectId)>, Error> {
    let platform = repo.references().map_err(|e| internal("list refs", e))?;
    let mut out = Vec::new();
    for r in platform.all().map_err(|e| internal("list refs", e))? {
        let r = r.map_err(|e| internal("read ref", e))?;
        if let Some(id) = r.target().try_id() {
            out.push((r.name().as_bstr().to_string(), id.to_owned()));
        }
    }
    out.sort();
    Ok(out)
}

/// Limits on one received pack.
#[derive(Debug, Clone, Copy)]
pub struct PackLimits {
    /// Largest pack in bytes.
    pub max_bytes: u64,
    /// Most objects.
    pub max_objects: u32,
}

/// A received pack, indexed in a quarantine directory inside the repo's object
/// store, invisible to the repo until [`apply`] moves it in. Dropping it deletes it.
pub struct Incoming {
    dir: tempfile::TempDir,
    pack: Option<(PathBuf, PathBuf)>,
    objects: Vec<ObjectId>,
}

/// Reads a pack from `reader` into a new quarantine of the repo at `repo_dir`,
/// completing a thin pack from the repo's objects and verifying every entry.
pub fn receive(
    repo_dir: &Path,
    reader: &mut dyn BufRead,
    limits: PackLimits,
) -> Result<Incoming, Error> {
    let repo = open(repo_dir)?;
    let objects_dir = repo_dir.join("objects");
    let dir = tempfile::Builder::new()
        .prefix(QUARANTINE_PREFIX)
        .tempdir_in(&objects_dir)
        .map_err(|e| internal("create quarantine", e))?;
    let pack_dir = dir.path().join("pack");
    std::fs::create_dir_all(&pack_dir).map_err(|e| internal("create quarantine", e))?;
    std::fs::create_dir_all(dir.path().join("info"))
        .and_then(|()| {
            let objects = objects_dir.canonicalize()?;
            std::fs::write(
                dir.path().join("info/alternates"),
                format!("{}\n", objects.display()),
            )
        })
        .map_err(|e| internal("create quarantine", e))?;

    let mut limited = io::BufReader::with_capacity(
        1 << 16,
        Limited {
            inner: reader,
            read: 0,
            header: Vec::with_capacity(12),
            limits,
            violation: None,
        },
    );
    let interrupt = AtomicBool::new(false);
    let outcome = gix::odb::pack::Bundle::write_to_directory(
        &mut limited,
        Some(&pack_dir),
        &mut gix::progress::Discard,
        &interrupt,
        Some(repo.objects.clone()),
        SHA1,
        gix::odb::pack::bundle::write::Options {
            alloc_limit_bytes: Some(MAX_OBJECT_BYTES),
            ..Default::default()
        },
    );
    let outcome = match (outcome, limited.into_inner().violation) {
        (_, Some(limit)) => return Err(Error::Rejected(limit)),
        (Ok(o), None) => o,
        (Err(e), None) => return Err(Error::Rejected(format!("pack rejected: {e}"))),
    };
    if let Some(keep) = &outcome.keep_path {
        let _ = std::fs::remove_file(keep);
    }
    let objects = match outcome.to_bundle() {
        Some(bundle) => {
            let bundle = bundle.map_err(|e| internal("open received pack", e))?;
            bundle.index.iter().map(|e| e.oid).collect()
        }
        None => Vec::new(),
    };
    let pack = outcome.data_path.zip(outcome.index_path);
    Ok(Incoming { dir, pack, objects })
}

/// Passes a pack through while enforcing [`PackLimits`]; the object count is checked
/// from the header before any object is read.
struct Limited<'a> {
    inner: &'a mut dyn BufRead,
    read: u64,
    header: Vec<u8>,
    limits: PackLimits,
    violation: Option<String>,
}

impl Read for Limited<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        if self.read > self.limits.max_bytes {
            return Err(self.violate(format!(
                "pack is larger than {} bytes (git.max_pack_bytes)",
                self.limits.max_bytes
            )));
        }
        if self.header.len() < 12 {
            let want = (12 - self.header.len()).min(n);
            self.header.extend_from_slice(&buf[..want]);
            if self.header.len() == 12 && self.header.starts_with(b"PACK") {
                let count = u32::from_be_bytes([
                    self.header[8],
                    self.header[9],
                    self.header[10],
                    self.header[11],
                ]);
                if count > self.limits.max_objects {
                    return Err(self.violate(format!(
                        "pack holds {count} objects, more than {} (git.max_objects)",
                        self.limits.max_objects
                    )));
                }
            }
        }
        Ok(n)
    }
}

impl Limited<'_> {
    fn violate(&mut self, why: String) -> io::Error {
        self.violation = Some(why.clone());
        io::Error::other(why)
    }
}

impl Incoming {
    /// The name the received pack will have in the repo's `objects/pack`, if any.
    pub fn pack_name(&self) -> Option<std::ffi::OsString> {
        self.pack
            .as_ref()
            .and_then(|(pack, _)| pack.file_name().map(ToOwned::to_owned))
    }

    /// An empty quarantine, for pushes that only delete refs.
    pub fn none(repo_dir: &Path) -> Result<Self, Error> {
        let dir = tempfile::Builder::new()
            .prefix(QUARANTINE_PREFIX)
            .tempdir_in(repo_dir.join("objects"))
            .map_err(|e| internal("create quarantine", e))?;
        Ok(Self {
            dir,
            pack: None,
            objects: Vec::new(),
        })
    }

    /// The repo at `repo_dir` as it would be with this quarantine's objects.
    pub fn view(&self, repo_dir: &Path) -> Result<Repository, Error> {
        let mut view = open(repo_dir)?;
        let mut handle =
            gix::odb::at(self.dir.path(), SHA1).map_err(|e| internal("open quarantine", e))?;
        // Delta bases cached, as `gix::open` does for a repo's own store: without it a
        // walk over a pack's trees inflates each delta chain again per object.
        handle.set_pack_cache(|| Box::<gix_pack::cache::lru::StaticLinkedList<64>>::default());
        view.objects = gix::odb::memory::Proxy::new(handle, SHA1);
        Ok(view)
    }

    /// Objects in the received pack.
    pub fn object_count(&self) -> usize {
        self.objects.len()
    }

    /// Checks the push against the repo at `repo_dir` as the quarantine completes it:
    /// every object the pack holds refers only to objects that exist (so the repo
    /// stays closed, as every pack entering it was checked so); every new tip exists;
    /// and for each command whether it rewrites history (deletes a ref, or moves it to
    /// a commit that does not descend from the old one).
    pub fn check(&self, repo_dir: &Path, commands: &[Command]) -> Result<Vec<bool>, Error> {
        let main = open(repo_dir)?;
        let view = self.view(repo_dir)?;

        let known: HashSet<ObjectId> = self.objects.iter().copied().collect();
        let exists = |id: &ObjectId| known.contains(id) || main.has_object(id);
        let missing = |id: &ObjectId, from: &ObjectId| {
            Error::Rejected(format!(
                "object {from} refers to {id}, which is neither in the pack nor in the repo"
            ))
        };
        for id in &self.objects {
            let header = view
                .find_header(*id)
                .map_err(|e| internal("read pushed object", e))?;
            if header.kind() == Kind::Blob {
                continue;
            }
            let object = view
                .find_object(*id)
                .map_err(|e| internal("read pushed object", e))?;
            let bad = |e: &dyn std::fmt::Display| {
                Error::Rejected(format!("pushed {} {id} is malformed: {e}", object.kind))
            };
            let mut referents = Vec::new();
            match object.kind {
                Kind::Commit => {
                    let mut iter = CommitRefIter::from_bytes(&object.data, SHA1);
                    referents.push(iter.tree_id().map_err(|e| bad(&e))?);
                    referents.extend(iter.parent_ids());
                }
                Kind::Tree => {
                    for entry in TreeRefIter::from_bytes(&object.data, SHA1) {
                        let entry = entry.map_err(|e| bad(&e))?;
                        // Submodule commits live in other repos.
                        if !entry.mode.is_commit() {
                            referents.push(entry.oid.to_owned());
                        }
                    }
                }
                Kind::Tag => {
                    referents.push(
                        TagRefIter::from_bytes(&object.data, SHA1)
                            .target_id()
                            .map_err(|e| bad(&e))?,
                    );
                }
                Kind::Blob => {}
            }
            if let Some(gone) = referents.iter().find(|r| !exists(r)) {
                return Err(missing(gone, id));
            }
        }

        let mut rewrites = Vec::with_capacity(commands.len());
        for cmd in commands {
            if cmd.is_delete() {
                rewrites.push(true);
                continue;
            }
            if !exists(&cmd.new) {
                return Err(Error::Rejected(format!(
                    "{} would point at {}, which was not pushed",
                    cmd.name, cmd.new
                )));
            }
            if cmd.old.is_null() {
                rewrites.push(false);
                continue;
            }
            // Not a fast-forward when old is no ancestor of new, or either is no commit.
            rewrites.push(!contains(&view, cmd.new, cmd.old));
        }
        Ok(rewrites)
    }
}

/// One ref change of a transaction: `expected` is the value the ref must hold
/// (`None`: absent), `new` the value to set (`None`: delete).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edit {
    /// Full ref name (validated).
    pub name: String,
    /// The value compared before swapping.
    pub expected: Option<ObjectId>,
    /// The value swapped in.
    pub new: Option<ObjectId>,
}

impl Edit {
    /// The edit a pushed command asks for.
    pub fn from_command(cmd: &Command) -> Self {
        let some = |id: ObjectId| (!id.is_null()).then_some(id);
        Self {
            name: cmd.name.clone(),
            expected: some(cmd.old),
            new: some(cmd.new),
        }
    }
}

/// The current value of ref `name` in `repo`.
pub fn current(repo: &Repository, name: &str) -> Result<Option<ObjectId>, Error> {
    Ok(repo
        .try_find_reference(name)
        .map_err(|e| internal("read ref", e))?
        .and_then(|r| r.target().try_id().map(ToOwned::to_owned)))
}

/// Applies an accepted push to the repo at `repo_dir`: checks that every ref still
/// holds the value its edit expects (else nothing changes: "fetch first"), moves the
/// quarantined pack into the repo, and updates all refs in one transaction whose old
/// values are compared and swapped. The caller holds the repo's push lock and
/// records the push once this returns.
/// `default` is the repo's default branch on chain, for `HEAD` ([`point_head`]).
pub fn apply(
    repo_dir: &Path,
    incoming: Incoming,
    edits: &[Edit],
    default: Option<&str>,
) -> Result<(), Error> {
    let repo = open(repo_dir)?;
    for edit in edits {
        let now = current(&repo, &edit.name)?;
        if now != edit.expected {
            let show =
                |id: Option<ObjectId>| id.map_or_else(|| "absent".to_owned(), |i| i.to_string());
            return Err(Error::Rejected(format!(
                "fetch first: {} is {} now, not {} as your push expected; run git fetch (or git pull) and push again",
                edit.name,
                show(now),
                show(edit.expected)
            )));
        }
    }
    admit(repo_dir, incoming)?;
    set_refs(repo_dir, &repo, edits, default)
}

/// Moves a checked quarantine's pack into the repo: its objects become part of it.
pub fn admit(repo_dir: &Path, incoming: Incoming) -> Result<(), Error> {
    if let Some((pack, index)) = &incoming.pack {
        let pack_dir = repo_dir.join("objects/pack");
        // The index goes last: git and gix only look at packs that have one.
        for file in [pack, index] {
            let to = pack_dir.join(file.file_name().unwrap_or_default());
            if !to.exists() {
                std::fs::rename(file, &to).map_err(|e| internal("move pack into repo", e))?;
            }
        }
    }
    Ok(())
}

/// Moves the refs of `edits` in one compare-and-swap transaction, then keeps `HEAD`
/// where [`point_head`] says with the repo's default branch `default`.
pub fn set_refs(
    repo_dir: &Path,
    repo: &Repository,
    edits: &[Edit],
    default: Option<&str>,
) -> Result<(), Error> {
    let edits = edits.iter().map(|edit| {
        let expected = match edit.expected {
            None => PreviousValue::MustNotExist,
            Some(id) => PreviousValue::MustExistAndMatch(Target::Object(id)),
        };
        let change = match edit.new {
            None => Change::Delete {
                expected,
                log: RefLog::AndReference,
            },
            Some(new) => Change::Update {
                log: LogChange {
                    message: "push".into(),
                    ..Default::default()
                },
                expected,
                new: Target::Object(new),
            },
        };
        // Names were validated when the command was parsed.
        #[allow(clippy::expect_used)]
        let name = edit.name.as_str().try_into().expect("validated ref name");
        RefEdit::new(name, change)
    });
    repo.edit_references(edits).map_err(|e| {
        Error::Rejected(format!(
            "fetch first: a ref moved while your push was applied ({e}); run git fetch and push again"
        ))
    })?;
    point_head(repo_dir, repo, default)
}

/// Whether `commit` is `tip` or one of its ancestors (false when either is missing).
pub fn contains(repo: &Repository, tip: ObjectId, commit: ObjectId) -> bool {
    tip == commit
        || repo
            .merge_base(commit, tip)
            .is_ok_and(|base| base.is_some_and(|b| b.detach() == commit))
}

/// How many commits the history of `id` holds (itself included); `None` when an
/// object is missing.
pub fn history(repo: &Repository, id: ObjectId) -> Option<u64> {
    let walk = repo.rev_walk([id]).all().ok()?;
    let mut n = 0u64;
    for commit in walk {
        commit.ok()?;
        n += 1;
    }
    Some(n)
}

/// Deletes the repo at `repo_dir` (its token was burned): renamed aside first, so a
/// crash leaves either the whole repo or none.
pub fn remove(repo_dir: &Path) -> Result<(), Error> {
    if !repo_dir.exists() {
        return Ok(());
    }
    let aside = repo_dir.with_extension("git.removed");
    std::fs::rename(repo_dir, &aside)
        .and_then(|()| std::fs::remove_dir_all(&aside))
        .map_err(|e| internal("remove repo", e))
}

/// Points `HEAD` where clones should start: at `refs/heads/<default>` when the repo
/// names a default branch on chain (whether or not it exists yet); else, when it
/// names a branch that does not exist and another branch does, at `main`, `master`
/// or the first branch. A default that is no valid branch name is ignored.
pub fn point_head(repo_dir: &Path, repo: &Repository, default: Option<&str>) -> Result<(), Error> {
    let head = std::fs::read_to_string(repo_dir.join("HEAD")).unwrap_or_default();
    let current = head.trim().strip_prefix("ref: ").unwrap_or_default();
    let chosen = default
        .map(|b| format!("refs/heads/{b}"))
        .filter(|name| gix::refs::FullName::try_from(name.as_str()).is_ok());
    let pick = match chosen {
        Some(name) if name == current => return Ok(()),
        Some(name) => name,
        None => {
            // The usual case, answered without listing every ref.
            if repo.try_find_reference(current).is_ok_and(|r| r.is_some()) {
                return Ok(());
            }
            let branches: Vec<String> = list_refs(repo)?
                .into_iter()
                .map(|(name, _)| name)
                .filter(|n| n.starts_with("refs/heads/"))
                .collect();
            if branches.is_empty() || branches.iter().any(|b| b == current) {
                return Ok(());
            }
            ["refs/heads/main", "refs/heads/master"]
                .into_iter()
                .find(|p| branches.iter().any(|b| b == p))
                .unwrap_or(&branches[0])
                .to_owned()
        }
    };
    let tmp = repo_dir.join("HEAD.hanzo-tmp");
    std::fs::write(&tmp, format!("ref: {pick}\n"))
        .and_then(|()| std::fs::rename(&tmp, repo_dir.join("HEAD")))
        .map_err(|e| internal("update HEAD", e))
}

/// Makes the repo at `repo_dir` agree with its push records after a crash: refs the
/// records do not justify are set back to the recorded tip or removed, and
/// quarantines left behind are deleted. Returns how many refs were changed.
pub fn reconcile(repo_dir: &Path, records: &[(String, RefRecord)]) -> Result<usize, Error> {
    if let Ok(entries) = std::fs::read_dir(repo_dir.join("objects")) {
        for entry in entries.flatten() {
            if entry
                .file_name()
                .to_string_lossy()
                .starts_with(QUARANTINE_PREFIX)
            {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
    let repo = open(repo_dir)?;
    let actual: HashMap<String, ObjectId> = list_refs(&repo)?.into_iter().collect();
    // A tombstone (zero target) records a deletion: the ref must be absent.
    let recorded: HashMap<&str, ObjectId> = records
        .iter()
        .filter(|(_, r)| !r.is_tombstone())
        .map(|(n, r)| (n.as_str(), ObjectId::Sha1(r.target)))
        .collect();
    let mut edits = Vec::new();
    for (name, id) in &actual {
        // Tips of updates waiting for signatures have no record (`pending` keeps them).
        if name.starts_with(super::pending::PREFIX) {
            continue;
        }
        match recorded.get(name.as_str()) {
            Some(r) if r == id => {}
            other => edits.push((name.clone(), other.copied())),
        }
    }
    for (name, id) in &recorded {
        if !actual.contains_key(*name) {
            edits.push(((*name).to_owned(), Some(*id)));
        }
    }
    let count = edits.len();
    for (name, target) in &edits {
        warn!(target: TARGET, repo = %repo_dir.display(), reference = %name, ?target, "ref disagrees with its push record; restoring the recorded tip");
    }
    force_refs(&repo, &edits)?;
    Ok(count)
}

/// Sets each ref to its tip, or deletes it (`None`), whatever it holds now; names
/// git would refuse are skipped.
pub fn force_refs(repo: &Repository, refs: &[(String, Option<ObjectId>)]) -> Result<(), Error> {
    for (name, target) in refs {
        let change = match target {
            Some(id) => Change::Update {
                log: LogChange::default(),
                expected: PreviousValue::Any,
                new: Target::Object(*id),
            },
            None => Change::Delete {
                expected: PreviousValue::Any,
                log: RefLog::AndReference,
            },
        };
        let Ok(full) = name.as_str().try_into() else {
            continue;
        };
        repo.edit_reference(RefEdit::new(full, change))
            .map_err(|e| internal("set ref", e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Stdio;

    fn git(dir: &Path, args: &[&str]) -> String {
        let out = std::process::Command::new("git")
            .args([
                "-c",
                "user.name=t",
                "-c",
                "user.email=t@t",
                "-c",
                "init.defaultBranch=main",
            ])
            .args(args)
            .current_dir(dir)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("HOME", dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    fn commit(dir: &Path, file: &str) -> ObjectId {
        std::fs::write(dir.join(file), file).unwrap();
        git(dir, &["add", file]);
        git(dir, &["commit", "-q", "-m", file]);
        ObjectId::from_hex(git(dir, &["rev-parse", "HEAD"]).as_bytes()).unwrap()
    }

    /// `git pack-objects --revs` of `revs` in `dir`.
    fn pack(dir: &Path, revs: &str) -> Vec<u8> {
        let mut child = std::process::Command::new("git")
            .args(["pack-objects", "--stdout", "--revs", "-q"])
            .current_dir(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), revs.as_bytes()).unwrap();
        child.wait_with_output().unwrap().stdout
    }

    fn cmd(old: ObjectId, new: ObjectId) -> Command {
        Command {
            old,
            new,
            name: "refs/heads/main".into(),
        }
    }

    const LIMITS: PackLimits = PackLimits {
        max_bytes: 1 << 20,
        max_objects: 1000,
    };

    #[test]
    fn receive_check_apply_and_reconcile() {
        let tmp = tempfile::tempdir().unwrap();
        let work = tmp.path().join("work");
        std::fs::create_dir(&work).unwrap();
        git(&work, &["init", "-q"]);
        let a = commit(&work, "a");
        let b = commit(&work, "b");
        let root = tmp.path().join("repos");
        let repo = ensure(&root, 7).unwrap();
        assert_eq!(
            std::fs::read_to_string(repo.join("HEAD")).unwrap(),
            "ref: refs/heads/main\n"
        );
        let zero = ObjectId::null(SHA1);

        // B's objects without A's: B's parent is nowhere, so the pack is refused.
        let partial = pack(&work, &format!("{b}\n^{a}\n"));
        let incoming = receive(&repo, &mut &partial[..], LIMITS).unwrap();
        let err = incoming.check(&repo, &[cmd(zero, b)]).unwrap_err();
        assert!(
            err.to_string()
                .contains("neither in the pack nor in the repo"),
            "{err}"
        );
        drop(incoming);

        // A alone enters; then the partial pack is complete and a fast-forward.
        let first = pack(&work, &format!("{a}\n"));
        let incoming = receive(&repo, &mut &first[..], LIMITS).unwrap();
        assert_eq!(incoming.check(&repo, &[cmd(zero, a)]).unwrap(), vec![false]);
        // Before apply, nothing of the push is visible.
        assert!(!open(&repo).unwrap().has_object(a));
        apply(&repo, incoming, &[Edit::from_command(&cmd(zero, a))], None).unwrap();
        let incoming = receive(&repo, &mut &partial[..], LIMITS).unwrap();
        assert_eq!(incoming.check(&repo, &[cmd(a, b)]).unwrap(), vec![false]);
        // Deletion and a move back to A are rewrites.
        assert_eq!(incoming.check(&repo, &[cmd(b, zero)]).unwrap(), vec![true]);
        // A stale old value moves nothing.
        let err = apply(&repo, incoming, &[Edit::from_command(&cmd(b, a))], None)
            .err()
            .unwrap();
        assert!(err.to_string().contains("fetch first"), "{err}");
        assert_eq!(refs(&repo).unwrap(), vec![("refs/heads/main".into(), a)]);
        let incoming = receive(&repo, &mut &partial[..], LIMITS).unwrap();
        apply(&repo, incoming, &[Edit::from_command(&cmd(a, b))], None).unwrap();
        assert_eq!(refs(&repo).unwrap(), vec![("refs/heads/main".into(), b)]);
        git(&repo, &["fsck", "--strict", "--no-dangling"]);

        // After a crash between ref update and record: the record wins.
        let record = |t: ObjectId| RefRecord {
            target: *t.as_bytes().first_chunk().unwrap(),
            cert: [0; 32],
            identity: 1,
            handle: "a".into(),
            key: "k".into(),
            timestamp: 0,
        };
        git(&repo, &["update-ref", "refs/heads/stray", &b.to_string()]);
        std::fs::create_dir(repo.join("objects/incoming-left")).unwrap();
        let records = vec![("refs/heads/main".to_owned(), record(a))];
        assert_eq!(reconcile(&repo, &records).unwrap(), 2);
        assert_eq!(refs(&repo).unwrap(), vec![("refs/heads/main".into(), a)]);
        assert!(!repo.join("objects/incoming-left").exists());
        assert_eq!(reconcile(&repo, &records).unwrap(), 0);
    }

    #[test]
    fn bad_packs_are_refused_with_the_reason() {
        let tmp = tempfile::tempdir().unwrap();
        let work = tmp.path().join("work");
        std::fs::create_dir(&work).unwrap();
        git(&work, &["init", "-q"]);
        let a = commit(&work, "a");
        let repo = ensure(&tmp.path().join("repos"), 1).unwrap();
        let bytes = pack(&work, &format!("{a}\n"));
        let cut = receive(&repo, &mut &bytes[..bytes.len() - 30], LIMITS)
            .err()
            .unwrap();
        assert!(cut.to_string().contains("pack rejected"), "{cut}");
        let small = PackLimits {
            max_bytes: 50,
            max_objects: 1000,
        };
        let err = receive(&repo, &mut &bytes[..], small).err().unwrap();
        assert!(err.to_string().contains("git.max_pack_bytes"), "{err}");
        let few = PackLimits {
            max_bytes: 1 << 20,
            max_objects: 2,
        };
        let err = receive(&repo, &mut &bytes[..], few).err().unwrap();
        assert!(
            err.to_string()
                .contains("pack holds 3 objects, more than 2"),
            "{err}"
        );
        let garbage = receive(&repo, &mut &b"PACK\0\0\0\x02\0\0\0\x01garbage"[..], LIMITS)
            .err()
            .unwrap();
        assert!(garbage.to_string().contains("pack rejected"), "{garbage}");
        let huge = receive(&repo, &mut &b"PACK\0\0\0\x02\xff\xff\xff\xff"[..], LIMITS)
            .err()
            .unwrap();
        assert!(huge.to_string().contains("git.max_objects"), "{huge}");
        // Nothing is left behind.
        let left: Vec<_> = std::fs::read_dir(repo.join("objects"))
            .unwrap()
            .flatten()
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with(QUARANTINE_PREFIX)
            })
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn head_follows_the_default_branch_on_chain() {
        let tmp = tempfile::tempdir().unwrap();
        let repo_dir = ensure(tmp.path(), 1).unwrap();
        let work = tmp.path().join("work");
        std::fs::create_dir(&work).unwrap();
        git(&work, &["init", "-q"]);
        let a = commit(&work, "a");
        let r = open(&repo_dir).unwrap();
        let head = || std::fs::read_to_string(repo_dir.join("HEAD")).unwrap();
        for name in ["refs/heads/a-2011-release", "refs/heads/unstable"] {
            git(
                &repo_dir,
                &[
                    "fetch",
                    "-q",
                    work.to_str().unwrap(),
                    &format!("{a}:{name}"),
                ],
            );
        }
        // No default on chain and no main: the first branch, as before.
        point_head(&repo_dir, &r, None).unwrap();
        assert_eq!(head(), "ref: refs/heads/a-2011-release\n");
        point_head(&repo_dir, &r, Some("unstable")).unwrap();
        assert_eq!(head(), "ref: refs/heads/unstable\n");
        // A default that does not exist yet is still where clones will start.
        point_head(&repo_dir, &r, Some("next")).unwrap();
        assert_eq!(head(), "ref: refs/heads/next\n");
        // A name git refuses is ignored.
        point_head(&repo_dir, &r, Some("a..b")).unwrap();
        assert_eq!(head(), "ref: refs/heads/a-2011-release\n");
    }
}

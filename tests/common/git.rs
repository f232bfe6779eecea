//! Git users for the tests: an ed25519 key made by `ssh-keygen`, a `$HOME` with a
//! `.gitconfig` that signs pushes with it, and the stock `git` binary.

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
};

use hanzo_node::{acl::Key, keys::SshKey};

use crate::{Devnet, ok};

/// A person with an SSH key and a git configuration.
pub struct GitUser {
    /// Their name (also the identity handle the tests give them).
    pub name: String,
    /// `$HOME` for their git runs; work trees go under it too.
    pub home: tempfile::TempDir,
    /// Private key file.
    pub key: PathBuf,
    /// Public key.
    pub ssh: SshKey,
}

impl GitUser {
    /// A new user with a fresh key; pushes are signed with `gpg.format=ssh`.
    pub fn new(name: &str) -> Self {
        let home = tempfile::tempdir().expect("tempdir");
        let key = home.path().join("id_ed25519");
        let out = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
            .arg(&key)
            .output()
            .expect("ssh-keygen");
        ok(&out);
        let line = std::fs::read_to_string(key.with_extension("pub")).expect("public key");
        let ssh = SshKey::parse_line(&line).expect("ssh key");
        std::fs::write(
            home.path().join(".gitconfig"),
            format!(
                "[user]\n\tname = {name}\n\temail = {name}@example.com\n\tsigningkey = {}\n[gpg]\n\tformat = ssh\n[init]\n\tdefaultBranch = main\n[commit]\n\tgpgsign = false\n[advice]\n\tdetachedHead = false\n",
                key.display()
            ),
        )
        .expect("gitconfig");
        Self {
            name: name.into(),
            home,
            key,
            ssh,
        }
    }

    /// The key as the ACL knows it.
    pub fn acl_key(&self) -> Key {
        Key::Ssh(self.ssh)
    }

    /// Sets a git config value in this user's global config.
    pub fn config(&self, key: &str, value: &str) {
        ok(&self.git(self.home.path(), &["config", "--global", key, value]));
    }

    /// Runs `git args` in `dir` as this user, with this build's `git-remote-hanzo`
    /// on the PATH.
    pub fn git(&self, dir: &Path, args: &[&str]) -> Output {
        self.command(dir, args).output().expect("run git")
    }

    /// `git args` in `dir` as this user, to run or spawn.
    pub fn command(&self, dir: &Path, args: &[&str]) -> Command {
        self.command_via(Command::new("git"), dir, args)
    }

    /// `git args` in `dir` as this user, run by `launcher` (`git` itself, or e.g.
    /// `ip netns exec <ns> git`).
    pub fn command_via(&self, mut cmd: Command, dir: &Path, args: &[&str]) -> Command {
        let bin = crate::node_bin();
        let path = std::env::join_paths(
            std::iter::once(bin.parent().expect("target dir").to_path_buf()).chain(
                std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()),
            ),
        )
        .expect("PATH");
        cmd.args(args)
            .current_dir(dir)
            .env_clear()
            .env("PATH", path)
            .env("HOME", self.home.path())
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("LANG", "C");
        cmd
    }

    /// Runs git and returns stdout and stderr together, panicking on failure.
    pub fn git_ok(&self, dir: &Path, args: &[&str]) -> String {
        let out = self.git(dir, args);
        let text = output_text(&out);
        assert!(out.status.success(), "git {args:?} failed:\n{text}");
        text
    }

    /// Runs git, expecting failure; returns stdout and stderr together.
    pub fn git_err(&self, dir: &Path, args: &[&str]) -> String {
        let out = self.git(dir, args);
        let text = output_text(&out);
        assert!(!out.status.success(), "git {args:?} succeeded:\n{text}");
        text
    }

    /// A work tree `name` under this user's home, made by `git init`.
    pub fn init(&self, name: &str) -> PathBuf {
        let dir = self.home.path().join(name);
        std::fs::create_dir_all(&dir).expect("work tree");
        self.git_ok(&dir, &["init", "-q"]);
        dir
    }

    /// Writes `file` and commits it; returns the new commit id.
    pub fn commit(&self, dir: &Path, file: &str, content: &str) -> String {
        std::fs::write(dir.join(file), content).expect("write file");
        self.git_ok(dir, &["add", file]);
        self.git_ok(dir, &["commit", "-q", "-m", &format!("{file}: {content}")]);
        self.rev(dir, "HEAD")
    }

    /// `git rev-parse rev` in `dir`.
    pub fn rev(&self, dir: &Path, rev: &str) -> String {
        self.git_ok(dir, &["rev-parse", rev]).trim().to_owned()
    }

    /// The refs `git ls-remote url` shows, as `(id, name)`.
    pub fn ls_remote(&self, url: &str) -> Vec<(String, String)> {
        let out = self.git_ok(self.home.path(), &["ls-remote", url]);
        out.lines()
            .filter_map(|l| l.split_once('\t'))
            .map(|(id, name)| (id.to_owned(), name.to_owned()))
            .collect()
    }
}

/// The push-cert nonce a node advertises for the repo at smart-HTTP `url`.
pub fn push_nonce(url: &str) -> String {
    let out = Command::new("curl")
        .args(["-sf", &format!("{url}/info/refs?service=git-receive-pack")])
        .output()
        .expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let at = text.find("push-cert=").expect("push-cert advertised") + "push-cert=".len();
    text[at..]
        .split(|c: char| c.is_whitespace())
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// A push certificate for `commands` (`old new ref` lines) with `pushee` and `nonce`,
/// dated `timestamp` and signed by `user`'s key as `git push --signed` signs.
pub fn certificate(
    user: &GitUser,
    (pushee, nonce): (&str, &str),
    timestamp: u64,
    commands: &str,
) -> Vec<u8> {
    let payload = format!(
        "certificate version 0.1\npusher {} {timestamp} +0000\npushee {pushee}\nnonce {nonce}\n\n{commands}",
        user.ssh.fingerprint()
    );
    let signature = piped(
        Command::new("ssh-keygen")
            .args(["-q", "-Y", "sign", "-n", "git", "-f"])
            .arg(&user.key),
        payload.as_bytes(),
    );
    let mut cert = payload.into_bytes();
    cert.extend(signature);
    cert
}

/// Asserts that `git fsck --strict` finds the bare repo `repo` clean.
pub fn fsck(repo: &Path) {
    let out = Command::new("git")
        .args(["fsck", "--strict", "--no-dangling"])
        .current_dir(repo)
        .output()
        .expect("run git fsck");
    assert!(
        out.status.success(),
        "fsck of {}: {}",
        repo.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The quarantine directories (`objects/incoming-*`) in a bare repo: a pack still
/// arriving, or left by a crash.
pub fn quarantines(repo: &Path) -> usize {
    std::fs::read_dir(repo.join("objects")).map_or(0, |d| {
        d.filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with("incoming-"))
            .count()
    })
}

/// Runs `cmd` with `input` on its stdin; returns its stdout.
pub fn piped(cmd: &mut Command, input: &[u8]) -> Vec<u8> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input)
        .expect("write stdin");
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success(), "{cmd:?} failed");
    out.stdout
}

/// stdout then stderr as text.
pub fn output_text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

impl Devnet {
    /// Dev account `i` mints identity `user.name` and adds the user's SSH key.
    pub async fn identity_for(&self, i: usize, user: &GitUser) {
        let c = self.client(i).await;
        c.mint_identity(&user.name).await.expect("mint identity");
        c.add_key(&user.name, &user.acl_key())
            .await
            .expect("add key");
    }

    /// Alice (dev account 1) with her SSH key on chain, and her public repo demo; the
    /// repo's token id.
    pub async fn alice_with_demo(&self) -> (GitUser, u64) {
        let alice = GitUser::new("alice");
        self.identity_for(1, &alice).await;
        let demo = self
            .client(1)
            .await
            .create_repo("demo", "alice", false)
            .await
            .expect("create repo demo");
        (alice, demo)
    }

    /// Where the node keeps repo token `id`.
    pub fn repo_dir(&self, id: u64) -> PathBuf {
        self.dir.path().join("repos").join(format!("{id}.git"))
    }
}

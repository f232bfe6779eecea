//! The command line: argument definitions and what each command does. Every read
//! takes `--json`; nothing prompts when `HANZO_PASSWORD` or `HANZO_PRIVATE_KEY` is set.
//! This is the binary's front end, so it reports errors with `anyhow`.

use std::{
    io::{IsTerminal, Read},
    path::PathBuf,
    time::Duration,
};

use alloy::{
    primitives::{Address, U256, utils::parse_units},
    signers::local::PrivateKeySigner,
};
use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};

use crate::{
    acl::{self, Key, Member, Snapshot, StakeRole},
    chain::{self, Client, DeployParams},
    config::{CONFIG_FILE, Config, Overrides},
    keys::{self, NODE_KEY_FILE, NodeKey, OPERATOR_KEYSTORE_FILE, SshKey},
    node::Node,
    store::Store,
};

/// hanzo-node: a validator node whose every permission comes from chain state.
#[derive(Debug, Parser)]
#[command(name = "hanzo-node", version)]
pub struct Cli {
    #[command(flatten)]
    overrides: Overrides,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create the data dir with a node key, an operator keystore and a config file.
    Init(InitArgs),
    /// Run the node: chain sync, ACL, HTTP health and metrics.
    Run,
    /// Show the effective configuration.
    Config {
        /// Print it as TOML.
        #[arg(long, required = true)]
        dump: bool,
    },
    /// Deploy the contracts and write the deployment file.
    Deploy(DeployArgs),
    /// Operator stake and registration.
    #[command(subcommand)]
    Operator(OperatorCmd),
    /// Caller (dApp) stake, and signing in to a node's gRPC.
    #[command(subcommand)]
    Caller(CallerCmd),
    /// Run a compose app on a node, as `docker compose` does on a Docker host:
    /// `up -f docker-compose.yml`, `ps`, `logs -f`, `exec -it`, `scale`, `down`,
    /// `events`.
    Compose(ComposeArgs),
    /// Identity tokens and their keys.
    #[command(subcommand)]
    Identity(IdentityCmd),
    /// Repository tokens and their members.
    #[command(subcommand)]
    Repo(RepoCmd),
    /// This node's ACL.
    #[command(subcommand)]
    Acl(AclCmd),
    /// A git credential helper that answers with a private-repo read token signed
    /// by your SSH key (git runs it; see the README).
    GitCredential(GitCredentialArgs),
    /// Find a node's endpoints from its key (or its operator's address): its signed
    /// DNS packet on the Mainline DHT, checked against the stake on chain.
    Resolve {
        /// Node key (0x + 64 hex, or z-base-32) or operator address (0x + 40 hex).
        target: String,
        #[command(flatten)]
        read: ReadArgs,
    },
    /// The whole system on this machine: anvil, the contracts, a loopback DHT, N
    /// operators' nodes, a demo identity and repo; prints what to try. Its state is
    /// kept in --data-dir [default: ./.devnet]; Ctrl-C stops it, running it again
    /// resumes.
    Devnet(crate::devnet::Args),
    /// Run a Mainline DHT of a few nodes on loopback for a devnet; prints its
    /// bootstrap addresses (comma-separated, for `dns.bootstrap`) and runs until
    /// stopped.
    DevDht {
        /// How many DHT nodes.
        #[arg(long, default_value_t = 5)]
        nodes: usize,
    },
}

#[derive(Debug, Args)]
struct GitCredentialArgs {
    /// Your SSH ed25519 private key (or its public key, when the private one is in
    /// ssh-agent).
    #[arg(long)]
    key: PathBuf,
    /// How long a token lives; the node refuses more than its git.max_token_lifetime.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    lifetime: Duration,
    /// What git asks: get, store or erase.
    action: String,
}

#[derive(Debug, Args)]
struct InitArgs {
    /// Derive both keys from the BIP39 mnemonic in HANZO_MNEMONIC.
    #[arg(long)]
    from_mnemonic: bool,
}

#[derive(Debug, Args)]
struct DeployArgs {
    /// Minimum operator stake.
    #[arg(long, default_value = "1ETH", value_parser = parse_amount)]
    min_operator_stake: U256,
    /// Minimum caller stake.
    #[arg(long, default_value = "0.1ETH", value_parser = parse_amount)]
    min_caller_stake: U256,
    /// Unbonding period.
    #[arg(long, default_value = "7d", value_parser = humantime::parse_duration)]
    unbonding: Duration,
    /// Where to write the deployment file [default: the configured deployment file].
    #[arg(long)]
    out: Option<PathBuf>,
    #[command(flatten)]
    signer: SignerArgs,
}

#[derive(Debug, Args, Clone, Default)]
struct SignerArgs {
    /// Sign with this private key instead of the data dir's operator keystore.
    #[arg(long, env = "HANZO_PRIVATE_KEY", hide_env_values = true)]
    private_key: Option<String>,
}

#[derive(Debug, Args)]
struct ReadArgs {
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum OperatorCmd {
    /// Register this node's key with an initial stake.
    Register {
        /// Stake, e.g. `1ETH`, `0.5`, `100gwei`.
        #[arg(long, value_parser = parse_amount)]
        stake: U256,
        /// Endpoint published on-chain: the node's git URL (`http(s)://host:port`,
        /// where users push: replicas accept only pushes made to an operator's URL)
        /// and its p2p multiaddrs, space-separated.
        #[arg(long, default_value = "")]
        endpoint: String,
        #[command(flatten)]
        signer: SignerArgs,
    },
    /// Change the endpoint published on-chain.
    SetEndpoint {
        /// New endpoint: `http(s)://host:port` and p2p multiaddrs, space-separated.
        endpoint: String,
        #[command(flatten)]
        signer: SignerArgs,
    },
    /// Slash an operator or caller (needs the registry's slasher role).
    Slash {
        /// Account to slash.
        account: Address,
        #[arg(value_parser = parse_amount)]
        amount: U256,
        /// Slash caller stake rather than operator stake.
        #[arg(long)]
        caller: bool,
        /// Reason, recorded on-chain.
        #[arg(long, default_value = "")]
        reason: String,
        #[command(flatten)]
        signer: SignerArgs,
    },
    #[command(flatten)]
    Stake(StakeCmd),
}

/// Stake commands operators and callers share.
#[derive(Debug, Subcommand)]
enum StakeCmd {
    /// Add stake.
    Deposit {
        /// Amount, e.g. `1ETH`, `0.5`, `100gwei`.
        #[arg(value_parser = parse_amount)]
        amount: U256,
        #[command(flatten)]
        signer: SignerArgs,
    },
    /// Start unbonding stake; it stops counting at once.
    Unstake {
        /// Amount, e.g. `0.5ETH`.
        #[arg(value_parser = parse_amount)]
        amount: U256,
        #[command(flatten)]
        signer: SignerArgs,
    },
    /// Withdraw stake whose unbonding period is over.
    Withdraw {
        #[command(flatten)]
        signer: SignerArgs,
    },
    /// Show the stake [default: of the signer's address].
    Status {
        /// Account address.
        #[arg(long)]
        address: Option<Address>,
        #[command(flatten)]
        read: ReadArgs,
        #[command(flatten)]
        signer: SignerArgs,
    },
}

#[derive(Debug, Args)]
struct ComposeArgs {
    /// The node's gRPC URL (`https://…` for TLS).
    #[arg(long, env = "HANZO_NODE_URL", default_value = "http://127.0.0.1:8690")]
    url: String,
    /// The compose file; its top-level `name` (else its directory) names the
    /// deployment.
    #[arg(short = 'f', long = "file", default_value = "docker-compose.yml")]
    file: PathBuf,
    /// The deployment's name, over the file's.
    #[arg(short = 'p', long = "project-name")]
    project: Option<String>,
    /// The node's CA certificate (PEM), for TLS.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// A client certificate and key (PEM), for a node that asks for mTLS.
    #[arg(long, requires = "key")]
    cert: Option<PathBuf>,
    #[arg(long, requires = "cert")]
    key: Option<PathBuf>,
    #[command(flatten)]
    signer: SignerArgs,
    #[command(subcommand)]
    command: ComposeCmd,
}

#[derive(Debug, Subcommand)]
enum ComposeCmd {
    /// Deploy the file (replacing an earlier deploy of it); always detached.
    Up {
        /// Accepted for compose's habit; the node runs it detached anyway.
        #[arg(short = 'd', long)]
        detach: bool,
    },
    /// The containers.
    Ps {
        #[arg(long)]
        json: bool,
    },
    /// Log lines (of one service).
    Logs {
        service: Option<String>,
        #[arg(short = 'f', long)]
        follow: bool,
        /// Lines from the end (0: all kept).
        #[arg(long, default_value_t = 0)]
        tail: u32,
    },
    /// Run a command in a container (`web-1`, or a service's first).
    Exec {
        /// Keep stdin open.
        #[arg(short = 'i', long)]
        interactive: bool,
        /// A terminal (raw mode, resizes followed).
        #[arg(short = 't', long)]
        tty: bool,
        container: String,
        #[arg(trailing_var_arg = true, required = true)]
        command: Vec<String>,
    },
    /// Set replicas: `web=3`.
    Scale { spec: String },
    /// Stop and remove the containers (named volumes stay).
    Down,
    /// Events as they happen.
    Events {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum CallerCmd {
    /// Sign in to a node's gRPC with the signer's Ethereum key (a SIWE message) and
    /// print the session token, for `authorization: Bearer <token>`.
    SignIn {
        /// The node's gRPC URL, e.g. `http://127.0.0.1:8682`.
        url: String,
        #[command(flatten)]
        signer: SignerArgs,
    },
    #[command(flatten)]
    Stake(StakeCmd),
}

#[derive(Debug, Subcommand)]
enum IdentityCmd {
    /// Mint an identity with this handle to the signer.
    Mint {
        handle: String,
        #[command(flatten)]
        signer: SignerArgs,
    },
    /// Add an SSH ed25519 public key (a `.pub` file) or an Ethereum address.
    AddKey {
        handle: String,
        /// `~/.ssh/id_ed25519.pub` or `0x…` address.
        key: String,
        #[command(flatten)]
        signer: SignerArgs,
    },
    /// Revoke a key.
    RevokeKey {
        handle: String,
        /// `~/.ssh/id_ed25519.pub` or `0x…` address.
        key: String,
        #[command(flatten)]
        signer: SignerArgs,
    },
    /// Show an identity and its keys.
    Show {
        handle: String,
        #[command(flatten)]
        read: ReadArgs,
    },
}

#[derive(Debug, Subcommand)]
enum RepoCmd {
    /// Create a repository owned by an identity the signer holds.
    Create {
        name: String,
        /// Owner identity handle.
        #[arg(long)]
        owner: String,
        /// Readable by members only.
        #[arg(long)]
        private: bool,
        #[command(flatten)]
        signer: SignerArgs,
    },
    /// Let an identity push.
    AddCommitter(MemberArgs),
    /// Stop an identity pushing.
    RemoveCommitter(MemberArgs),
    /// Let an identity read a private repo.
    AddReader(MemberArgs),
    /// Stop an identity reading.
    RemoveReader(MemberArgs),
    /// Set the branch clones check out (`HEAD` on every node); `""` clears it.
    DefaultBranch {
        name: String,
        /// Branch name without `refs/heads/`, e.g. `unstable`.
        branch: String,
        #[command(flatten)]
        signer: SignerArgs,
    },
    /// Set (or with --remove drop) a ref rule: refs matching the pattern (e.g.
    /// `refs/heads/main`, `refs/tags/v*`; `*` is any characters but `/`) move only with
    /// the signatures of --threshold of the --signers identities. Every node enforces it.
    Rule {
        name: String,
        pattern: String,
        /// Identity handles that may sign, comma-separated.
        #[arg(long, value_delimiter = ',', required_unless_present = "remove")]
        signers: Vec<String>,
        /// Signatures each update needs.
        #[arg(long, default_value_t = 1)]
        threshold: u8,
        /// Remove the rule for this pattern.
        #[arg(long, conflicts_with_all = ["signers"])]
        remove: bool,
        #[command(flatten)]
        signer: SignerArgs,
    },
    /// Burn the repository's token: every node deletes the repo and its history.
    Burn {
        name: String,
        #[command(flatten)]
        signer: SignerArgs,
    },
    /// Show a repository and its members.
    Show {
        name: String,
        #[command(flatten)]
        read: ReadArgs,
    },
    /// The repo's ref tips on this node, each with the identity and push certificate
    /// that set it, and the tips kept under `refs/superseded/` (which clients do not
    /// see).
    Refs {
        name: String,
        #[command(flatten)]
        read: ReadArgs,
    },
    /// Prints a push certificate this node stores for the repo, as the pusher's git
    /// signed it: `cert` is its SHA-256 (or a unique prefix) from `repo refs`.
    Cert { name: String, cert: String },
    /// Restores a kept tip (`refs/superseded/…`, listed by `repo refs`): fetches it
    /// into the git repository in the current directory and pushes it, signed, to
    /// the ref it was the tip of (or `--to`). Rewriting a ref needs the repo's owner.
    Restore {
        name: String,
        /// The kept ref, `refs/superseded/<cert>/<ref>`.
        kept: String,
        /// The ref to set; default: the ref it was the tip of.
        #[arg(long)]
        to: Option<String>,
        /// The repo's URL; default: this node's registered git URL.
        #[arg(long)]
        url: Option<String>,
    },
}

#[derive(Debug, Args)]
struct MemberArgs {
    /// Repository name.
    name: String,
    /// Identity handle.
    handle: String,
    #[command(flatten)]
    signer: SignerArgs,
}

#[derive(Debug, Subcommand)]
enum AclCmd {
    /// What this node's ACL holds now, with the block it reflects.
    Show(ReadArgs),
}

/// Parses `1`, `0.5ETH`, `1 ether`, `100gwei`, `5wei` into wei.
pub fn parse_amount(s: &str) -> Result<U256, String> {
    let t = s.trim().to_ascii_lowercase().replace(' ', "");
    let (num, unit) = match t.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => t.split_at(i),
        None => (t.as_str(), "ether"),
    };
    let unit = if unit == "eth" { "ether" } else { unit };
    parse_units(num, unit)
        .map(Into::into)
        .map_err(|e| format!("{s:?} is not an amount like 1ETH, 0.5, 100gwei: {e}"))
}

/// Longest password file read.
const MAX_PASSWORD_FILE: u64 = 4096;

fn password(config: &Config) -> Result<String> {
    if let Ok(p) = std::env::var("HANZO_PASSWORD") {
        return Ok(p);
    }
    if let Some(path) = &config.password_file {
        let mut text = String::new();
        std::fs::File::open(path)
            .and_then(|f| f.take(MAX_PASSWORD_FILE).read_to_string(&mut text))
            .with_context(|| {
                format!(
                    "cannot read the keystore password file {} (--password-file / HANZO_PASSWORD_FILE)",
                    path.display()
                )
            })?;
        let line = text.lines().next().unwrap_or_default();
        if line.is_empty() {
            bail!("the keystore password file {} is empty", path.display());
        }
        return Ok(line.to_owned());
    }
    if !std::io::stdin().is_terminal() {
        bail!(
            "no password: set HANZO_PASSWORD, or HANZO_PASSWORD_FILE / --password-file to a file holding it, for the operator keystore"
        );
    }
    Ok(rpassword::prompt_password("operator keystore password: ")?)
}

fn signer(config: &Config, args: &SignerArgs) -> Result<PrivateKeySigner> {
    if let Some(k) = &args.private_key {
        return Ok(keys::parse_private_key(k)?);
    }
    let path = config.data_dir.join(OPERATOR_KEYSTORE_FILE);
    if !path.exists() {
        bail!(
            "no operator keystore at {}: run `hanzo-node init` or pass --private-key / HANZO_PRIVATE_KEY",
            path.display()
        );
    }
    Ok(keys::load_operator(&path, &password(config)?)?)
}

/// Connects a client, checking the chain id against the deployment file.
async fn client(config: &Config, signer: Option<PrivateKeySigner>) -> Result<Client> {
    let (provider, deployment) =
        chain::open(&config.chain.rpc_url, signer, &config.deployment_path()).await?;
    Ok(Client::new(provider, deployment))
}

async fn signed(config: &Config, args: &SignerArgs) -> Result<(Client, Address)> {
    let s = signer(config, args)?;
    let address = s.address();
    Ok((client(config, Some(s)).await?, address))
}

/// Prints a read's result; a closed pipe (`| head`) ends the output quietly.
fn print<T: serde::Serialize>(json: bool, value: &T, text: impl FnOnce() -> String) -> Result<()> {
    let out = if json {
        serde_json::to_string_pretty(value)? + "\n"
    } else {
        text()
    };
    match std::io::Write::write_all(&mut std::io::stdout().lock(), out.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

fn parse_key(arg: &str) -> Result<Key> {
    if arg.starts_with("0x") && arg.len() == 42 {
        return Ok(Key::Eth(arg.parse().context("not an Ethereum address")?));
    }
    let text = std::fs::read_to_string(arg)
        .with_context(|| format!("cannot read SSH public key file {arg}"))?;
    let key = SshKey::parse_line(text.trim()).with_context(|| format!("in {arg}"))?;
    Ok(Key::Ssh(key))
}

fn stake_text(v: &chain::OperatorView) -> String {
    format!(
        "{}: stake {} ({}; minimum {}), unbonding {}{}\n",
        v.address,
        acl::eth(v.stake),
        if v.active { "active" } else { "inactive" },
        acl::eth(v.minimum),
        acl::eth(v.unbonding),
        if v.release_at > 0 {
            format!(" until unix time {}", v.release_at)
        } else {
            String::new()
        },
    )
}

/// Runs the parsed command line.
pub async fn run(cli: Cli) -> Result<()> {
    let mut config = Config::load(&cli.overrides)?;
    if matches!(cli.command, Command::Devnet(_)) && cli.overrides.log.is_none() {
        // Several nodes share the terminal with the devnet's summary.
        config.log.filter = "warn".into();
    }
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log.filter)
        .with_context(|| format!("invalid log filter {:?}", config.log.filter))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Init(args) => init(&config, &args),
        Command::Run => {
            let node = Node::start(config).await?;
            // SIGINT and SIGTERM (systemd's stop) alike: a graceful stop, exit 0. A
            // critical task that fails stops the node too, and the exit is non-zero
            // so the service manager restarts it.
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            tokio::select! {
                r = tokio::signal::ctrl_c() => r?,
                _ = term.recv() => {}
                _ = node.failed() => {}
            }
            tracing::info!(target: "hanzo::cli", "stopping");
            match node.shutdown().await {
                None => Ok(()),
                Some(failure) => Err(anyhow::anyhow!("{failure}; the node stopped")),
            }
        }
        Command::Config { .. } => print(false, &(), || config.dump()),
        Command::Deploy(args) => {
            let s = signer(&config, &args.signer)?;
            let admin = s.address();
            let provider = chain::connect(&config.chain.rpc_url, Some(s)).await?;
            let params = DeployParams {
                min_operator_stake: args.min_operator_stake,
                min_caller_stake: args.min_caller_stake,
                unbonding_period: args.unbonding.as_secs(),
            };
            let deployment = chain::deploy(&provider, admin, &params).await?;
            let out = args.out.unwrap_or_else(|| config.deployment_path());
            if let Some(dir) = out.parent() {
                std::fs::create_dir_all(dir)?;
            }
            deployment.save(&out)?;
            println!("{}", serde_json::to_string_pretty(&deployment)?);
            eprintln!("deployment written to {}", out.display());
            Ok(())
        }
        Command::Resolve { target, read } => {
            let acl = client(&config, None).await?.snapshot().await?;
            let resolver = crate::dns::Resolver::new(crate::dns::client(&config.dns)?)
                .with_relays(&config.dns.relays);
            let r = resolver.resolve(&acl, &target).await?;
            print(read.json, &r, || {
                let e = &r.endpoints;
                let mut out = format!("node {} of operator {}\n", r.node_key, r.operator);
                for (what, url) in [("git", &e.git), ("grpc", &e.grpc)] {
                    if let Some(url) = url {
                        out.push_str(&format!("  {what}: {url}\n"));
                    }
                }
                for a in &e.p2p {
                    out.push_str(&format!("  p2p: {a}\n"));
                }
                out.push_str(&format!("  chain: {}\n", e.chain_id));
                out
            })
        }
        Command::DevDht { nodes } => {
            let dht =
                tokio::task::spawn_blocking(move || mainline::Testnet::builder(nodes).build())
                    .await??;
            println!("{}", dht.bootstrap.join(","));
            tokio::signal::ctrl_c().await?;
            drop(dht);
            Ok(())
        }
        Command::Operator(cmd) => operator(&config, cmd).await,
        Command::Caller(CallerCmd::Stake(cmd)) => stake(&config, StakeRole::Caller, cmd).await,
        Command::Caller(CallerCmd::SignIn { url, signer: s }) => {
            println!("{}", sign_in(&url, &signer(&config, &s)?).await?);
            Ok(())
        }
        Command::Devnet(args) => {
            let root = cli
                .overrides
                .data_dir
                .clone()
                .unwrap_or_else(|| ".devnet".into());
            crate::devnet::run(&root, &args, cli.overrides.log.clone()).await
        }
        Command::Identity(cmd) => identity(&config, cmd).await,
        Command::Repo(cmd) => repo(&config, cmd).await,
        Command::Acl(AclCmd::Show(read)) => {
            let store = local_store(&config)?;
            let snap: Snapshot = store.latest_checkpoint()?.unwrap_or_default();
            print(read.json, &acl::view::json(&snap), || {
                acl::view::text(&snap)
            })
        }
        Command::GitCredential(args) => git_credential(&args),
        Command::Compose(args) => compose(&config, args).await,
    }
}

async fn compose(config: &Config, a: ComposeArgs) -> Result<()> {
    use hanzo_node_client::{Client, Connect, compose};
    let read =
        |p: &PathBuf| std::fs::read(p).with_context(|| format!("cannot read {}", p.display()));
    let mut connect = Connect::new(a.url.clone());
    connect.ca_pem = a.ca.as_ref().map(read).transpose()?;
    if let (Some(c), Some(k)) = (&a.cert, &a.key) {
        connect.identity_pem = Some((read(c)?, read(k)?));
    }
    // The file is read only by `up`; the others need only its name.
    let text = match &a.command {
        ComposeCmd::Up { .. } => {
            let meta = std::fs::metadata(&a.file)
                .with_context(|| format!("no compose file {}: pass -f", a.file.display()))?;
            if meta.len() > 16 << 20 {
                bail!(
                    "{} is {} bytes: not a compose file",
                    a.file.display(),
                    meta.len()
                );
            }
            String::from_utf8(read(&a.file)?).context("the compose file is not UTF-8")?
        }
        _ => std::fs::read_to_string(&a.file).unwrap_or_default(),
    };
    let name = compose::project_name(a.project.as_deref(), &a.file, &text);
    let client = Client::connect(&connect, signer(config, &a.signer)?).await?;
    let out = &mut std::io::stdout();
    match a.command {
        ComposeCmd::Up { .. } => compose::up(&client, &text, &name, out).await?,
        ComposeCmd::Ps { json } => compose::ps(&client, &name, json, out).await?,
        ComposeCmd::Logs {
            service,
            follow,
            tail,
        } => {
            compose::logs(&client, &name, service.as_deref(), follow, tail, out).await?;
        }
        ComposeCmd::Exec {
            interactive,
            tty,
            container,
            command,
        } => {
            let container = if container.contains('-') {
                container
            } else {
                format!("{container}-1")
            };
            let code = compose::exec(&client, &name, &container, command, interactive, tty).await?;
            std::process::exit(code);
        }
        ComposeCmd::Scale { spec } => {
            let Some((service, n)) = spec.split_once('=') else {
                bail!("`{spec}` is not SERVICE=N, e.g. web=3");
            };
            let n = n
                .parse()
                .with_context(|| format!("`{n}` is not a replica count"))?;
            compose::scale(&client, &name, service, n, out).await?;
        }
        ComposeCmd::Down => compose::down(&client, &name, out).await?,
        ComposeCmd::Events { json } => compose::events(&client, &name, json, out).await?,
    }
    Ok(())
}

/// Signs in to the gRPC at `url` as `key` (SIWE, as a wallet would) and returns the
/// session token.
async fn sign_in(url: &str, key: &PrivateKeySigner) -> Result<String> {
    use hanzo_node_client::{Client, Connect};
    let client = Client::connect(&Connect::new(url), key.clone()).await?;
    Ok(client.token().await?)
}

/// The node's database, read-only (the node may be running).
fn local_store(config: &Config) -> Result<Store> {
    let path = config.db_path();
    if !path.exists() {
        bail!(
            "no database at {}: start the node with `hanzo-node run` first",
            path.display()
        );
    }
    Ok(Store::open_read_only(&path)?)
}

/// git's credential helper protocol: `key=value` lines on stdin, answered on stdout.
fn git_credential(args: &GitCredentialArgs) -> Result<()> {
    let mut input = String::new();
    std::io::Read::read_to_string(
        &mut std::io::Read::take(std::io::stdin(), 64 * 1024),
        &mut input,
    )?;
    if args.action != "get" {
        return Ok(()); // nothing is stored
    }
    let path = input
        .lines()
        .find_map(|l| l.strip_prefix("path="))
        .unwrap_or_default();
    // `demo.git` or `demo.git/info/refs` with credential.useHttpPath; `*` without.
    let first = path.split('/').next().unwrap_or_default();
    let repo = first.strip_suffix(".git").unwrap_or(first);
    let repo = if repo.is_empty() { "*" } else { repo };
    let expires = crate::unix_now() + args.lifetime.as_secs();
    let token = crate::git::token::issue(&args.key, repo, expires)?;
    println!("username=hanzo\npassword={token}");
    Ok(())
}

fn init(config: &Config, args: &InitArgs) -> Result<()> {
    let dir = &config.data_dir;
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create data dir {}", dir.display()))?;
    let key_path = dir.join(NODE_KEY_FILE);
    let keystore = dir.join(OPERATOR_KEYSTORE_FILE);
    if key_path.exists() || keystore.exists() {
        bail!(
            "{} already holds keys; refusing to overwrite them",
            dir.display()
        );
    }
    let (node, operator) = if args.from_mnemonic {
        let phrase =
            std::env::var("HANZO_MNEMONIC").context("--from-mnemonic needs HANZO_MNEMONIC")?;
        keys::from_mnemonic(&phrase)?
    } else {
        let operator = match std::env::var("HANZO_PRIVATE_KEY") {
            Ok(k) => keys::parse_private_key(&k)?,
            Err(_) => PrivateKeySigner::random(),
        };
        (NodeKey::generate(), operator)
    };
    node.save(&key_path)?;
    keys::save_operator(dir, OPERATOR_KEYSTORE_FILE, &operator, &password(config)?)?;
    let config_path = dir.join(CONFIG_FILE);
    if !config_path.exists() {
        std::fs::write(&config_path, config.dump())?;
    }
    println!("data dir:      {}", dir.display());
    println!("node key:      {}", node.public());
    println!("operator:      {}", operator.address());
    println!("config:        {}", config_path.display());
    Ok(())
}

async fn operator(config: &Config, cmd: OperatorCmd) -> Result<()> {
    match cmd {
        OperatorCmd::Register {
            stake,
            endpoint,
            signer: s,
        } => {
            let node = NodeKey::load(&config.data_dir.join(NODE_KEY_FILE))?;
            let (c, who) = signed(config, &s).await?;
            let r = c
                .register_operator(node.public().to_b256(), &endpoint, stake)
                .await?;
            println!(
                "registered operator {who} with node key {} and stake {} (block {})",
                node.public(),
                acl::eth(stake),
                r.block_number.unwrap_or_default()
            );
        }
        OperatorCmd::SetEndpoint {
            endpoint,
            signer: s,
        } => {
            signed(config, &s).await?.0.set_endpoint(&endpoint).await?;
            println!("endpoint set to {endpoint:?}");
        }
        OperatorCmd::Slash {
            account,
            amount,
            caller,
            reason,
            signer: s,
        } => {
            let role = if caller {
                StakeRole::Caller
            } else {
                StakeRole::Operator
            };
            signed(config, &s)
                .await?
                .0
                .slash(account, role, amount, &reason)
                .await?;
            println!("slashed {} from {account}", acl::eth(amount));
        }
        OperatorCmd::Stake(cmd) => stake(config, StakeRole::Operator, cmd).await?,
    }
    Ok(())
}

async fn stake(config: &Config, role: StakeRole, cmd: StakeCmd) -> Result<()> {
    let what = match role {
        StakeRole::Operator => "operator",
        StakeRole::Caller => "caller",
    };
    match cmd {
        StakeCmd::Deposit { amount, signer: s } => {
            let (c, _) = signed(config, &s).await?;
            match role {
                StakeRole::Operator => c.deposit_operator(amount).await?,
                StakeRole::Caller => c.deposit_caller(amount).await?,
            };
            println!("deposited {} of {what} stake", acl::eth(amount));
        }
        StakeCmd::Unstake { amount, signer: s } => {
            signed(config, &s)
                .await?
                .0
                .request_unstake(role, amount)
                .await?;
            println!(
                "unbonding {} of {what} stake; it no longer counts",
                acl::eth(amount)
            );
        }
        StakeCmd::Withdraw { signer: s } => {
            signed(config, &s).await?.0.withdraw(role).await?;
            println!("withdrew unbonded {what} stake");
        }
        StakeCmd::Status {
            address,
            read,
            signer: s,
        } => {
            let address = match address {
                Some(a) => a,
                None => signer(config, &s)?.address(),
            };
            let v = client(config, None).await?.stake(address, role).await?;
            print(read.json, &v, || {
                let node = match role {
                    StakeRole::Operator => format!("node key {}\n", v.node_key),
                    StakeRole::Caller => String::new(),
                };
                format!("{what} {}{node}", stake_text(&v))
            })?;
        }
    }
    Ok(())
}

async fn identity(config: &Config, cmd: IdentityCmd) -> Result<()> {
    match cmd {
        IdentityCmd::Mint { handle, signer: s } => {
            let (c, who) = signed(config, &s).await?;
            let id = c.mint_identity(&handle).await?;
            println!("minted identity {handle} (#{id}) to {who}");
        }
        IdentityCmd::AddKey {
            handle,
            key,
            signer: s,
        } => {
            let key = parse_key(&key)?;
            signed(config, &s).await?.0.add_key(&handle, &key).await?;
            println!("added key to identity {handle}");
        }
        IdentityCmd::RevokeKey {
            handle,
            key,
            signer: s,
        } => {
            let key = parse_key(&key)?;
            signed(config, &s)
                .await?
                .0
                .revoke_key(&handle, &key)
                .await?;
            println!("revoked key of identity {handle}");
        }
        IdentityCmd::Show { handle, read } => {
            let v = client(config, None).await?.identity(&handle).await?;
            print(read.json, &v, || {
                let mut s = format!("identity {} (#{}) held by {}\n", v.handle, v.id, v.holder);
                for k in &v.keys {
                    s += &format!("  {k}\n");
                }
                s
            })?;
        }
    }
    Ok(())
}

async fn repo(config: &Config, cmd: RepoCmd) -> Result<()> {
    let member = |args: MemberArgs, role: Member, add: bool| async move {
        let (c, _) = signed(config, &args.signer).await?;
        c.set_member(&args.name, &args.handle, role, add).await?;
        let (verb, what) = match (add, role) {
            (true, Member::Committer) => ("added", "committer"),
            (false, Member::Committer) => ("removed", "committer"),
            (true, Member::Reader) => ("added", "reader"),
            (false, Member::Reader) => ("removed", "reader"),
        };
        println!("{verb} {} as {what} of repo {}", args.handle, args.name);
        anyhow::Ok(())
    };
    match cmd {
        RepoCmd::Create {
            name,
            owner,
            private,
            signer: s,
        } => {
            let (c, _) = signed(config, &s).await?;
            let id = c.create_repo(&name, &owner, private).await?;
            println!("created repo {name} (#{id}) owned by {owner}");
        }
        RepoCmd::Burn { name, signer: s } => {
            let (c, _) = signed(config, &s).await?;
            c.burn_repo(&name).await?;
            println!("burned repo {name}: every node removes it");
        }
        RepoCmd::DefaultBranch {
            name,
            branch,
            signer: s,
        } => {
            let (c, _) = signed(config, &s).await?;
            c.set_default_branch(&name, &branch).await?;
            if branch.is_empty() {
                println!(
                    "repo {name} has no default branch set: nodes keep HEAD at an existing branch"
                );
            } else {
                println!(
                    "repo {name} defaults to {branch}: every node points HEAD at refs/heads/{branch}"
                );
            }
        }
        RepoCmd::Rule {
            name,
            pattern,
            signers,
            threshold,
            remove,
            signer: s,
        } => {
            let (c, _) = signed(config, &s).await?;
            if remove {
                c.remove_ref_rule(&name, &pattern).await?;
                println!("removed ref rule {pattern} of repo {name}");
            } else {
                c.set_ref_rule(&name, &pattern, &signers, threshold).await?;
                println!(
                    "{pattern} of repo {name} now moves with the signatures of {threshold} of {}",
                    signers.join(", ")
                );
            }
        }
        RepoCmd::AddCommitter(a) => member(a, Member::Committer, true).await?,
        RepoCmd::RemoveCommitter(a) => member(a, Member::Committer, false).await?,
        RepoCmd::AddReader(a) => member(a, Member::Reader, true).await?,
        RepoCmd::RemoveReader(a) => member(a, Member::Reader, false).await?,
        RepoCmd::Refs { name, read } => {
            let store = local_store(config)?;
            let snap: Snapshot = store.latest_checkpoint()?.unwrap_or_default();
            let (id, _) = snap.repo(&name)?;
            let refs = crate::git::ref_views(&store, id)?;
            print(read.json, &refs, || {
                refs.iter()
                    .map(|r| {
                        let mut line = format!(
                            "{} {}  by {} ({}), cert {}",
                            r.target, r.name, r.handle, r.key, r.cert
                        );
                        if !r.cosigned.is_empty() {
                            line.push_str(&format!(", with certs {}", r.cosigned.join(", ")));
                        }
                        if !r.receipts.is_empty() {
                            let nodes: Vec<String> =
                                r.receipts.iter().map(|x| x.node.clone()).collect();
                            line.push_str(&format!(", held by {}", nodes.join(", ")));
                        }
                        line + "\n"
                    })
                    .collect()
            })?;
        }
        RepoCmd::Cert { name, cert } => {
            let store = local_store(config)?;
            let snap: Snapshot = store.latest_checkpoint()?.unwrap_or_default();
            let (id, _) = snap.repo(&name)?;
            let wanted = cert.to_ascii_lowercase();
            let mut matches: Vec<String> = crate::git::ref_views(&store, id)?
                .into_iter()
                .flat_map(|r| std::iter::once(r.cert).chain(r.cosigned))
                .filter(|c| c.starts_with(&wanted))
                .collect();
            matches.sort();
            matches.dedup();
            let hash = match matches.as_slice() {
                [one] => one.clone(),
                [] => bail!(
                    "no certificate {cert} justifies a ref of repo {name} on this node; `hanzo-node repo refs {name}` lists them"
                ),
                _ => bail!(
                    "{cert} is the prefix of several certificates of repo {name}: give more digits"
                ),
            };
            let mut key = [0u8; 32];
            hex::decode_to_slice(&hash, &mut key)
                .with_context(|| format!("certificate hash {hash} is not 64 hex digits"))?;
            let text = store
                .cert(&key)?
                .with_context(|| format!("certificate {hash} is recorded but not stored"))?;
            print!("{}", String::from_utf8_lossy(&text));
        }
        RepoCmd::Restore {
            name,
            kept,
            to,
            url,
        } => {
            let store = local_store(config)?;
            let snap: Snapshot = store.latest_checkpoint()?.unwrap_or_default();
            let (id, _) = snap.repo(&name)?;
            let refs = crate::git::ref_views(&store, id)?;
            let Some(view) = refs.iter().find(|r| r.name == kept) else {
                bail!(
                    "repo {name} keeps no {kept} on this node; list the kept tips with `hanzo-node repo refs {name}`"
                );
            };
            let Some(to) = to.or_else(|| {
                let rest = kept.strip_prefix(crate::git::register::SUPERSEDED_PREFIX)?;
                Some(format!("refs/{}", rest.split_once('/')?.1))
            }) else {
                bail!(
                    "{kept} is not a kept tip (refs/superseded/<cert>/<ref>); name the ref to set with --to"
                );
            };
            let url = match url {
                Some(u) => u,
                None => {
                    let node = NodeKey::load(&config.data_dir.join(NODE_KEY_FILE))?.public();
                    let base = snap
                        .endpoint_of(&node)
                        .and_then(|e| acl::git_urls(e).next().map(str::to_owned))
                        .unwrap_or_else(|| {
                            let mut addr = config.http.listen;
                            if addr.ip().is_unspecified() {
                                addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
                            }
                            format!("http://{addr}")
                        });
                    format!("{base}/{name}.git")
                }
            };
            for args in [
                vec!["fetch", "-q", url.as_str(), view.target.as_str()],
                vec![
                    "push",
                    "--signed",
                    url.as_str(),
                    &format!("+{}:{to}", view.target),
                ],
            ] {
                println!("git {}", args.join(" "));
                let status = std::process::Command::new("git").args(&args).status()?;
                if !status.success() {
                    bail!("git {} failed ({status})", args[0]);
                }
            }
            println!("restored {to} to {} (kept as {kept})", view.target);
        }
        RepoCmd::Show { name, read } => {
            let v = client(config, None).await?.repo(&name).await?;
            print(read.json, &v, || {
                let mut out = format!(
                    "repo {} (#{}){} owned by {}, held by {}\n  committers: {}\n  readers: {}\n",
                    v.name,
                    v.id,
                    if v.private { " private" } else { "" },
                    v.owner,
                    v.holder,
                    v.committers.join(", "),
                    v.readers.join(", ")
                );
                if let Some(b) = &v.default_branch {
                    out.push_str(&format!("  default branch: {b}\n"));
                }
                for r in &v.rules {
                    out.push_str(&format!(
                        "  rule {}: {} of {}\n",
                        r.pattern,
                        r.threshold,
                        r.signers.join(", ")
                    ));
                }
                out
            })?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts() {
        let eth = U256::from(10u64).pow(U256::from(18));
        assert_eq!(parse_amount("1").unwrap(), eth);
        assert_eq!(parse_amount("1ETH").unwrap(), eth);
        assert_eq!(parse_amount("0.5 ether").unwrap(), eth / U256::from(2));
        assert_eq!(
            parse_amount("100gwei").unwrap(),
            U256::from(100_000_000_000u64)
        );
        assert_eq!(parse_amount("5wei").unwrap(), U256::from(5));
        assert!(parse_amount("lots").is_err());
        assert!(parse_amount("1 banana").is_err());
    }
}

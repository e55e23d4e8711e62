//! pgw-key: manage polymur-gateway API keys in the key store.
//!
//! `pgw-key [flags] list names|all | create <name> | regen <name> | delete <name>`,
//! with the Go original's output lines (PROTOCOL.md). Unlike the original, refusing
//! a duplicate or missing name exits non-zero, so scripts can tell.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use polymur::keys::{self, KeyStore, KeyStoreConfig};

/// No command may hang on an unreachable store longer than this.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Parser, Debug)]
#[command(
    name = "pgw-key",
    version,
    about = "Manage polymur-gateway API keys (KV prefix polymur/gateway/keys/)"
)]
struct Args {
    /// Key store: consul (agent from CONSUL_HTTP_ADDR, token from CONSUL_HTTP_TOKEN),
    /// etcd or file.
    #[arg(long = "key-store", env = "PGW_KEY_KEY_STORE", value_enum, default_value_t = Store::Consul, global = true)]
    key_store: Store,

    /// etcd client URLs, comma-separated.
    #[arg(
        long = "etcd-endpoints",
        env = "PGW_KEY_ETCD_ENDPOINTS",
        default_value = "http://127.0.0.1:2379",
        value_delimiter = ',',
        global = true
    )]
    etcd_endpoints: Vec<String>,

    /// Key file (`<name> <key>` per line), for -key-store file.
    #[arg(long = "keys-file", env = "PGW_KEY_KEYS_FILE", global = true)]
    keys_file: Option<std::path::PathBuf>,

    /// Consul agent address: `CONSUL_HTTP_ADDR`, as every Consul client takes it.
    #[arg(skip = std::env::var("CONSUL_HTTP_ADDR").ok().filter(|a| !a.is_empty()).unwrap_or_else(|| "127.0.0.1:8500".into()))]
    consul_addr: String,

    /// Consul ACL token (environment only, so it stays out of `ps`).
    #[arg(skip = std::env::var("CONSUL_HTTP_TOKEN").ok().filter(|t| !t.is_empty()))]
    consul_token: Option<String>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Store {
    Consul,
    Etcd,
    File,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// List registered keys: `names` (one per line) or `all` (`<name>: <key>`).
    List {
        #[arg(value_enum)]
        what: ListWhat,
    },
    /// Register <name> with a new random key.
    Create { name: String },
    /// Give <name> a new random key (the old one stops working).
    Regen { name: String },
    /// Remove <name> (its key stops working).
    Delete { name: String },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum ListWhat {
    Names,
    All,
}

/// A refusal that is the user's answer, not a failure of the tool: printed as is.
struct Refused(String);

fn main() -> ExitCode {
    polymur::docgen::exit_if_requested(<Args as clap::CommandFactory>::command);
    // reqwest is built without a default crypto provider; any TLS in this process
    // uses ring. An error only means some other code installed one first.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = Args::parse_from(polymur::config::normalize_args(std::env::args_os()));
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pgw-key: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        tokio::time::timeout(COMMAND_TIMEOUT, run(args))
            .await
            .unwrap_or_else(|_| {
                Err(anyhow::anyhow!(
                    "no answer from the key store within {COMMAND_TIMEOUT:?}"
                ))
            })
    });
    match result {
        Ok(Ok(lines)) => {
            for line in lines {
                println!("{line}");
            }
            ExitCode::SUCCESS
        }
        Ok(Err(Refused(message))) => {
            eprintln!("{message}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("pgw-key: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the command; the inner result is the command's own answer (output lines or
/// a refusal), the outer one a failure to reach or use the store.
async fn run(args: Args) -> anyhow::Result<Result<Vec<String>, Refused>> {
    let config = match args.key_store {
        Store::Consul => KeyStoreConfig::Consul {
            addr: args.consul_addr.clone(),
            token: args.consul_token.clone(),
        },
        Store::Etcd => KeyStoreConfig::Etcd {
            endpoints: args.etcd_endpoints.clone(),
        },
        Store::File => KeyStoreConfig::File {
            path: args
                .keys_file
                .clone()
                .context("-key-store file needs -keys-file PATH")?,
        },
    };
    let store: Arc<dyn KeyStore> = keys::open(&config)?;
    let store = store.as_ref();
    Ok(match args.command {
        Command::List { what } => {
            let set = store.load().await?;
            Ok(set
                .iter()
                .map(|(name, key)| match what {
                    ListWhat::Names => name.clone(),
                    ListWhat::All => format!("{name}: {key}"),
                })
                .collect())
        }
        Command::Create { name } => {
            check_name(&name)?;
            // The first `create` makes the key file; everything else needs it.
            let new_file = matches!(&config, KeyStoreConfig::File { path } if !path.exists());
            if !new_file && store.load().await?.contains_key(&name) {
                Err(Refused(format!("Key {name} already exists")))
            } else {
                Ok(vec![put_new_key(store, &name, "registered").await?])
            }
        }
        Command::Regen { name } => {
            if !store.load().await?.contains_key(&name) {
                Err(Refused(format!("Key {name} doesn't exist")))
            } else {
                Ok(vec![put_new_key(store, &name, "regenerated").await?])
            }
        }
        Command::Delete { name } => {
            if store.delete(&name).await? {
                Ok(vec![format!("Successfully deleted {name}")])
            } else {
                Err(Refused(format!("Key {name} doesn't exist")))
            }
        }
    })
}

/// Gives `name` a new random key; the answer line says what was `done` (the original's wording).
async fn put_new_key(store: &dyn KeyStore, name: &str, done: &str) -> anyhow::Result<String> {
    let key = new_key()?;
    store.put(name, &key).await?;
    Ok(format!("Successfully {done} {name} with key {key}"))
}

/// A name becomes a KV path segment, a key-file field and (with -key-prefix) the first
/// node of metric paths, so it must be one non-empty token without `/` or spaces.
fn check_name(name: &str) -> anyhow::Result<()> {
    if name.is_empty()
        || name.contains('/')
        || name.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        anyhow::bail!("invalid key name {name:?}: it must be non-empty, without '/' or whitespace");
    }
    Ok(())
}

/// 24 hex characters from 12 bytes of the operating system's CSPRNG (the Go original
/// used math/rand; its keys looked the same, e.g. `19d2d0f0130a9c9a6f97bdb0`).
fn new_key() -> anyhow::Result<String> {
    use ring::rand::SecureRandom as _;
    let mut bytes = [0u8; 12];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| anyhow::anyhow!("the operating system's random generator failed"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

//! Identity commands: keys, Bitcoin signed messages, signed manifests.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};

use crate::identity::{self, AddressType, Network, PrivateKey};
use crate::manifest;

/// `deorch key ...`.
#[derive(Debug, clap::Subcommand)]
pub enum KeyCommand {
    /// Generate a key and store it (WIF, mode 0600; never overwrites).
    New {
        /// Where to write the key.
        #[arg(long)]
        out: PathBuf,
        /// mainnet, testnet or regtest.
        #[arg(long, default_value = "mainnet")]
        network: Network,
        /// Address type to print: p2wpkh, p2sh-p2wpkh or p2pkh.
        #[arg(long = "type", default_value = "p2wpkh")]
        kind: AddressType,
    },
    /// Print the address of a key.
    Address {
        /// The key file.
        #[arg(long)]
        key: PathBuf,
        /// p2wpkh, p2sh-p2wpkh or p2pkh.
        #[arg(long = "type", default_value = "p2wpkh")]
        kind: AddressType,
    },
}

/// `deorch key`.
pub fn key(cmd: KeyCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        KeyCommand::New { out, network, kind } => {
            let key = PrivateKey::generate(network);
            key.save(&out)
                .with_context(|| format!("writing {}", out.display()))?;
            println!("{}", key.address(kind)?);
        }
        KeyCommand::Address { key, kind } => println!("{}", load(&key)?.address(kind)?),
    }
    Ok(ExitCode::SUCCESS)
}

fn load(path: &Path) -> anyhow::Result<PrivateKey> {
    PrivateKey::load(path).with_context(|| format!("reading key {}", path.display()))
}

/// The message of `sign`/`verify`: given inline, or read from a file
/// (`-`: standard input) exactly as it is.
fn message_bytes(inline: Option<String>, file: Option<&Path>) -> anyhow::Result<Vec<u8>> {
    match (inline, file) {
        (Some(m), _) => Ok(m.into_bytes()),
        (None, Some(p)) if p == Path::new("-") => {
            let mut v = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut v)
                .context("reading the message from standard input")?;
            Ok(v)
        }
        (None, Some(p)) => {
            std::fs::read(p).with_context(|| format!("reading the message {}", p.display()))
        }
        (None, None) => bail!("give --message or --message-file"),
    }
}

/// `deorch sign`: print a BIP-137 signature (base64).
pub fn sign(
    key: &Path,
    message: Option<String>,
    message_file: Option<&Path>,
    kind: AddressType,
) -> anyhow::Result<ExitCode> {
    let message = message_bytes(message, message_file)?;
    println!("{}", identity::sign(&load(key)?, &message, kind)?);
    Ok(ExitCode::SUCCESS)
}

/// `deorch verify`: exit 0 when valid, 1 when not (saying why on stderr),
/// 2 when the message cannot be read (as for bad arguments).
pub fn verify(
    address: &str,
    signature: &str,
    message: Option<String>,
    message_file: Option<&Path>,
) -> anyhow::Result<ExitCode> {
    let message = match message_bytes(message, message_file) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("deorch verify: {e:#}");
            return Ok(ExitCode::from(2));
        }
    };
    match identity::verify(address, signature, &message) {
        Ok(()) => {
            println!("valid signature by {address}");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("invalid: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// `deorch sign-manifest`: sign every document of a file for a cluster and
/// print them (signer and signature in annotations).
pub fn sign_manifest(
    file: &Path,
    key: &Path,
    cluster: &str,
    kind: AddressType,
) -> anyhow::Result<ExitCode> {
    let parsed = manifest::parse_file(file);
    if !parsed.diagnostics.is_empty() {
        // Diagnostics on stderr: stdout is the signed manifest only.
        for d in &parsed.diagnostics {
            eprintln!("{d}");
        }
        bail!("{} is invalid; nothing signed", file.display());
    }
    let key = load(key)?;
    for (i, doc) in parsed.documents.iter().enumerate() {
        let signed = identity::sign_manifest(&doc.object.to_value(), cluster, &key, kind)
            .with_context(|| format!("{}: document {}", file.display(), i + 1))?;
        if i > 0 {
            println!("---");
        }
        print!(
            "{}",
            serde_saphyr::to_string(&signed).map_err(|e| anyhow::anyhow!("{e}"))?
        );
    }
    Ok(ExitCode::SUCCESS)
}

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

/// `deorch sign`: print a BIP-137 signature (base64).
pub fn sign(key: &Path, message: &str, kind: AddressType) -> anyhow::Result<ExitCode> {
    println!("{}", identity::sign(&load(key)?, message.as_bytes(), kind)?);
    Ok(ExitCode::SUCCESS)
}

/// `deorch verify`: exit 0 when valid, 1 when not (saying why on stderr).
pub fn verify(address: &str, signature: &str, message: &str) -> anyhow::Result<ExitCode> {
    match identity::verify(address, signature, message.as_bytes()) {
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
        for d in &parsed.diagnostics {
            println!("{d}");
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

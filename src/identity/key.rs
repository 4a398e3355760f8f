//! secp256k1 private keys: generation from OS randomness, the key file
//! (WIF, mode 0600, written atomically), loading (WIF or hex) and the
//! addresses a key controls.
//!
//! Key file format: one line, the key in Wallet Import Format (base58check
//! of `version ‖ 32-byte secret ‖ 0x01 if compressed`), so any wallet
//! (Bitcoin Core `importprivkey`, Electrum "import keys") can import it.
//! `load` also accepts 64 hex digits (taken as a compressed mainnet key).
//! Like ssh, `load` refuses a key file that group or others may read.

use std::fmt;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use k256::ecdsa::{SigningKey, VerifyingKey};
use rand_core::OsRng;
use thiserror::Error;

use super::address::{Address, AddressType, Network};
use crate::state_file;

/// Why a key could not be made, read, written or used.
#[derive(Debug, Error)]
pub enum KeyError {
    /// Neither WIF nor 64 hex digits.
    #[error("{0}: not a private key (expected WIF or 64 hex digits)")]
    Malformed(String),
    /// Valid encoding, but the secret is 0 or ≥ the curve order.
    #[error("{0}: the secret is not a valid secp256k1 scalar")]
    OutOfRange(String),
    /// The key file is readable by group or others.
    #[error(
        "{path}: key file mode is {mode:o}; it must not be readable by group or others (chmod 600)"
    )]
    Permissions {
        /// File.
        path: PathBuf,
        /// Its mode bits.
        mode: u32,
    },
    /// Refusing to overwrite an existing key file.
    #[error("{0}: already exists; refusing to overwrite a key")]
    Exists(PathBuf),
    /// Segwit addresses need a compressed public key.
    #[error("an uncompressed key cannot have a {0} address (segwit needs compressed keys)")]
    UncompressedSegwit(AddressType),
    /// File system error.
    #[error("{path}: {source}")]
    Io {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> KeyError + '_ {
    move |source| KeyError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A secp256k1 private key with the two facts WIF carries: whether its
/// public key is serialized compressed, and its network.
#[derive(Clone)]
pub struct PrivateKey {
    key: SigningKey,
    compressed: bool,
    network: Network,
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the secret.
        f.debug_struct("PrivateKey")
            .field("compressed", &self.compressed)
            .field("network", &self.network)
            .finish_non_exhaustive()
    }
}

impl PrivateKey {
    /// A new compressed key from the operating system's randomness.
    pub fn generate(network: Network) -> PrivateKey {
        PrivateKey {
            key: SigningKey::random(&mut OsRng),
            compressed: true,
            network,
        }
    }

    /// A key from its 32-byte secret.
    pub fn from_bytes(
        secret: &[u8],
        compressed: bool,
        network: Network,
    ) -> Result<PrivateKey, KeyError> {
        let key = SigningKey::from_slice(secret).map_err(|_| KeyError::OutOfRange("key".into()))?;
        Ok(PrivateKey {
            key,
            compressed,
            network,
        })
    }

    /// Parse WIF (mainnet `5…`/`K…`/`L…`, testnet `9…`/`c…`) or 64 hex
    /// digits (compressed, mainnet). Surrounding whitespace is ignored.
    pub fn parse(text: &str) -> Result<PrivateKey, KeyError> {
        let text = text.trim();
        let what = || "key".to_string();
        if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            let bytes = hex::decode(text).map_err(|_| KeyError::Malformed(what()))?;
            return Self::from_bytes(&bytes, true, Network::Mainnet);
        }
        let data = bs58::decode(text)
            .with_check(None)
            .into_vec()
            .map_err(|_| KeyError::Malformed(what()))?;
        let network = match data.first() {
            Some(0x80) => Network::Mainnet,
            Some(0xef) => Network::Testnet,
            _ => return Err(KeyError::Malformed(what())),
        };
        let compressed = match data.len() {
            33 => false,
            34 if data[33] == 0x01 => true,
            _ => return Err(KeyError::Malformed(what())),
        };
        Self::from_bytes(&data[1..33], compressed, network)
            .map_err(|_| KeyError::OutOfRange(what()))
    }

    /// Wallet Import Format.
    pub fn to_wif(&self) -> String {
        let mut data = Vec::with_capacity(34);
        data.push(self.network.wif_version());
        data.extend_from_slice(&self.key.to_bytes());
        if self.compressed {
            data.push(0x01);
        }
        bs58::encode(data).with_check().into_string()
    }

    /// The same key on another network (WIF cannot tell testnet from
    /// regtest).
    pub fn with_network(mut self, network: Network) -> PrivateKey {
        self.network = network;
        self
    }

    /// The same key with its public key serialized compressed or not
    /// (uncompressed keys only have P2PKH addresses).
    pub fn with_compression(mut self, compressed: bool) -> PrivateKey {
        self.compressed = compressed;
        self
    }

    /// The network the key was made or imported for.
    pub fn network(&self) -> Network {
        self.network
    }

    /// Whether the public key is serialized compressed.
    pub fn compressed(&self) -> bool {
        self.compressed
    }

    /// The signing key.
    pub(crate) fn signing_key(&self) -> &SigningKey {
        &self.key
    }

    /// The public key, serialized compressed (33 bytes) or not (65).
    pub fn public_key(&self) -> Vec<u8> {
        VerifyingKey::from(&self.key)
            .to_encoded_point(self.compressed)
            .as_bytes()
            .to_vec()
    }

    /// The address of type `kind` on the key's network.
    pub fn address(&self, kind: AddressType) -> Result<Address, KeyError> {
        Address::from_pubkey(&self.public_key(), kind, self.network)
            .ok_or(KeyError::UncompressedSegwit(kind))
    }

    /// Write the key to `path` as one WIF line, mode 0600, atomically
    /// (temporary file in the same directory, fsync, link into place,
    /// fsync the directory). Refuses to overwrite an existing file.
    pub fn save(&self, path: &Path) -> Result<(), KeyError> {
        if path.exists() {
            return Err(KeyError::Exists(path.to_path_buf()));
        }
        if path.file_name().is_none() {
            return Err(KeyError::Malformed(path.display().to_string()));
        }
        // Not replacing: the file appears only if `path` is still free
        // (a hard link), so a key that appeared meanwhile is never clobbered.
        let once = state_file::Options {
            replace: false,
            ..state_file::Options::private()
        };
        let line = format!("{}\n", self.to_wif());
        state_file::write_with(path, line.as_bytes(), once).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                KeyError::Exists(path.to_path_buf())
            } else {
                io(path)(e)
            }
        })
    }

    /// Read a key file written by [`PrivateKey::save`] (or any file holding
    /// one WIF or hex key). Refuses files readable by group or others.
    pub fn load(path: &Path) -> Result<PrivateKey, KeyError> {
        let meta = fs::metadata(path).map_err(io(path))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyError::Permissions {
                path: path.to_path_buf(),
                mode,
            });
        }
        let text = fs::read_to_string(path).map_err(io(path))?;
        PrivateKey::parse(&text).map_err(|e| match e {
            KeyError::Malformed(_) => KeyError::Malformed(path.display().to_string()),
            KeyError::OutOfRange(_) => KeyError::OutOfRange(path.display().to_string()),
            other => other,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wif_of_key_one_matches_bitcoin_wiki() {
        // Private key 1: well-known WIF encodings.
        let mut one = [0u8; 32];
        one[31] = 1;
        let k = PrivateKey::from_bytes(&one, true, Network::Mainnet).unwrap();
        assert_eq!(
            k.to_wif(),
            "KwDiBf89QgGbjEhKnhXJuH7LrciVrZi3qYjgd9M7rFU73sVHnoWn"
        );
        let u = PrivateKey::from_bytes(&one, false, Network::Mainnet).unwrap();
        assert_eq!(
            u.to_wif(),
            "5HpHagT65TZzG1PH3CSu63k8DbpvD8s5ip4nEB3kEsreAnchuDf"
        );
        assert_eq!(
            k.address(AddressType::P2pkh).unwrap().to_string(),
            "1BgGZ9tcN4rm9KBzDn7KprQz87SZ26SAMH"
        );
        assert_eq!(
            u.address(AddressType::P2pkh).unwrap().to_string(),
            "1EHNa6Q4Jz2uvNExL497mE43ikXhwF6kZm"
        );
        assert!(matches!(
            u.address(AddressType::P2wpkh),
            Err(KeyError::UncompressedSegwit(_))
        ));
        for wif in [k.to_wif(), u.to_wif()] {
            let back = PrivateKey::parse(&wif).unwrap();
            assert_eq!(back.to_wif(), wif);
        }
        let hex_key = PrivateKey::parse(&hex::encode(one)).unwrap();
        assert_eq!(hex_key.to_wif(), k.to_wif());
    }

    #[test]
    fn bad_keys_are_refused() {
        assert!(matches!(
            PrivateKey::parse("hello"),
            Err(KeyError::Malformed(_))
        ));
        assert!(matches!(
            PrivateKey::parse(&"0".repeat(64)),
            Err(KeyError::OutOfRange(_))
        ));
        assert!(matches!(
            PrivateKey::parse(&"f".repeat(64)),
            Err(KeyError::OutOfRange(_))
        ));
        // An address is base58check too, but not a key.
        assert!(PrivateKey::parse("1BgGZ9tcN4rm9KBzDn7KprQz87SZ26SAMH").is_err());
    }

    #[test]
    fn save_is_0600_no_clobber_and_load_checks_mode() {
        let dir = std::env::temp_dir().join(format!("deorch-key-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("node.key");
        let k = PrivateKey::generate(Network::Testnet);
        k.save(&path).unwrap();
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(PrivateKey::load(&path).unwrap().to_wif(), k.to_wif());
        assert!(matches!(
            PrivateKey::generate(Network::Testnet).save(&path),
            Err(KeyError::Exists(_))
        ));
        assert_eq!(PrivateKey::load(&path).unwrap().to_wif(), k.to_wif());
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            PrivateKey::load(&path),
            Err(KeyError::Permissions { .. })
        ));
        assert_eq!(
            fs::read_dir(&dir).unwrap().count(),
            1,
            "no temporary file left"
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}

//! Bitcoin addresses deorch accepts as identities: P2PKH (`1…`, `m…`/`n…`),
//! nested P2SH-P2WPKH (`3…`, `2…`) and native P2WPKH (`bc1q…`, `tb1q…`,
//! `bcrt1q…`).
//!
//! A base58 P2SH address does not say what script it hashes; for signed
//! messages it is taken to be P2SH-P2WPKH, as Bitcoin Core, Electrum and
//! Trezor do. Testnet and regtest share their base58 version bytes, so a
//! parsed `m…`/`2…` address reports [`Network::Testnet`].

use std::fmt;
use std::str::FromStr;

use bech32::{hrp, Fe32, Hrp};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::hash160;

/// A Bitcoin network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    /// Mainnet: `1…`, `3…`, `bc1…`, WIF `5…`/`K…`/`L…`.
    Mainnet,
    /// Testnet (and signet): `m…`/`n…`, `2…`, `tb1…`, WIF `9…`/`c…`.
    Testnet,
    /// Regtest: base58 like testnet, bech32 `bcrt1…`.
    Regtest,
}

impl Network {
    /// All networks.
    pub const ALL: [Network; 3] = [Network::Mainnet, Network::Testnet, Network::Regtest];

    fn p2pkh_version(self) -> u8 {
        match self {
            Network::Mainnet => 0x00,
            Network::Testnet | Network::Regtest => 0x6f,
        }
    }
    fn p2sh_version(self) -> u8 {
        match self {
            Network::Mainnet => 0x05,
            Network::Testnet | Network::Regtest => 0xc4,
        }
    }
    /// The WIF version byte.
    pub(crate) fn wif_version(self) -> u8 {
        match self {
            Network::Mainnet => 0x80,
            Network::Testnet | Network::Regtest => 0xef,
        }
    }
    fn hrp(self) -> Hrp {
        match self {
            Network::Mainnet => hrp::BC,
            Network::Testnet => hrp::TB,
            Network::Regtest => hrp::BCRT,
        }
    }
}

impl Network {
    /// Whether addresses of `self` and `other` name coins of one chain.
    /// Base58 cannot tell testnet from regtest (one version byte), so the
    /// two test networks are one here; mainnet is alone.
    pub fn same_chain(self, other: Network) -> bool {
        (self == Network::Mainnet) == (other == Network::Mainnet)
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Network::Mainnet => "mainnet",
            Network::Testnet => "testnet",
            Network::Regtest => "regtest",
        })
    }
}

impl FromStr for Network {
    type Err = AddressError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "mainnet" | "main" | "bitcoin" => Ok(Network::Mainnet),
            "testnet" | "test" | "signet" => Ok(Network::Testnet),
            "regtest" => Ok(Network::Regtest),
            _ => Err(AddressError::UnknownNetwork(s.to_string())),
        }
    }
}

/// The kinds of address deorch signs and verifies for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AddressType {
    /// Pay to public key hash (legacy), compressed or uncompressed key.
    P2pkh,
    /// P2WPKH nested in P2SH (`3…`/`2…`); compressed keys only.
    P2shP2wpkh,
    /// Native segwit v0 P2WPKH (`bc1q…`); compressed keys only.
    P2wpkh,
}

impl AddressType {
    /// All address types.
    pub const ALL: [AddressType; 3] = [
        AddressType::P2pkh,
        AddressType::P2shP2wpkh,
        AddressType::P2wpkh,
    ];
}

impl fmt::Display for AddressType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AddressType::P2pkh => "p2pkh",
            AddressType::P2shP2wpkh => "p2sh-p2wpkh",
            AddressType::P2wpkh => "p2wpkh",
        })
    }
}

impl FromStr for AddressType {
    type Err = AddressError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "p2pkh" | "legacy" => Ok(AddressType::P2pkh),
            "p2sh-p2wpkh" | "p2sh(p2wpkh)" | "nested" | "p2sh-segwit" => {
                Ok(AddressType::P2shP2wpkh)
            }
            "p2wpkh" | "bech32" | "segwit" => Ok(AddressType::P2wpkh),
            _ => Err(AddressError::UnknownType(s.to_string())),
        }
    }
}

/// Why a string is not an address deorch can use.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AddressError {
    /// Neither valid base58check nor valid bech32.
    #[error("{0:?} is not a Bitcoin address (neither base58check nor bech32)")]
    Malformed(String),
    /// Valid encoding, unknown version byte or human-readable part.
    #[error("{0:?} is not a Bitcoin mainnet, testnet or regtest address")]
    UnknownNetwork(String),
    /// A real address type deorch does not sign with (P2WSH, taproot, …).
    #[error("{address:?} is a {what} address; deorch supports P2PKH, P2SH-P2WPKH and P2WPKH")]
    Unsupported {
        /// The address.
        address: String,
        /// What it is.
        what: String,
    },
    /// Unknown address type name.
    #[error("unknown address type {0:?} (expected p2pkh, p2sh-p2wpkh or p2wpkh)")]
    UnknownType(String),
}

/// A parsed address: its type, network and 20-byte hash (key hash for
/// P2PKH/P2WPKH, script hash for P2SH).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Address {
    /// Type.
    pub kind: AddressType,
    /// Network (testnet for base58 testnet/regtest addresses).
    pub network: Network,
    /// HASH160 of the key (P2PKH, P2WPKH) or of the redeem script (P2SH).
    pub hash: [u8; 20],
}

/// The P2WPKH witness program script `OP_0 PUSH20 <hash>`.
fn p2wpkh_script(key_hash: &[u8; 20]) -> [u8; 22] {
    let mut s = [0u8; 22];
    s[0] = 0x00;
    s[1] = 0x14;
    s[2..].copy_from_slice(key_hash);
    s
}

impl Address {
    /// The address of `kind` for a serialized public key (33 bytes
    /// compressed or 65 uncompressed). Segwit types need a compressed key:
    /// `None` otherwise.
    pub fn from_pubkey(pubkey: &[u8], kind: AddressType, network: Network) -> Option<Address> {
        let compressed = pubkey.len() == 33;
        let key_hash = hash160(pubkey);
        let hash = match kind {
            AddressType::P2pkh => key_hash,
            AddressType::P2wpkh if compressed => key_hash,
            AddressType::P2shP2wpkh if compressed => hash160(&p2wpkh_script(&key_hash)),
            _ => return None,
        };
        Some(Address {
            kind,
            network,
            hash,
        })
    }

    /// Whether this address is controlled by `pubkey` (serialized as the
    /// signature said: compressed or not).
    pub fn matches_pubkey(&self, pubkey: &[u8]) -> bool {
        Address::from_pubkey(pubkey, self.kind, self.network).is_some_and(|a| a.hash == self.hash)
    }

    /// Parse an address string.
    pub fn parse(s: &str) -> Result<Address, AddressError> {
        let s = s.trim();
        if let Ok(data) = bs58::decode(s).with_check(None).into_vec() {
            if data.len() != 21 {
                return Err(AddressError::Malformed(s.to_string()));
            }
            let mut hash = [0u8; 20];
            hash.copy_from_slice(&data[1..]);
            let (kind, network) = match data[0] {
                0x00 => (AddressType::P2pkh, Network::Mainnet),
                0x6f => (AddressType::P2pkh, Network::Testnet),
                0x05 => (AddressType::P2shP2wpkh, Network::Mainnet),
                0xc4 => (AddressType::P2shP2wpkh, Network::Testnet),
                _ => return Err(AddressError::UnknownNetwork(s.to_string())),
            };
            return Ok(Address {
                kind,
                network,
                hash,
            });
        }
        let (hrp, version, program) =
            bech32::segwit::decode(s).map_err(|_| AddressError::Malformed(s.to_string()))?;
        let network = if hrp == hrp::BC {
            Network::Mainnet
        } else if hrp == hrp::TB {
            Network::Testnet
        } else if hrp == hrp::BCRT {
            Network::Regtest
        } else {
            return Err(AddressError::UnknownNetwork(s.to_string()));
        };
        let unsupported = |what: &str| AddressError::Unsupported {
            address: s.to_string(),
            what: what.to_string(),
        };
        match (version, program.len()) {
            (Fe32::Q, 20) => {
                let mut hash = [0u8; 20];
                hash.copy_from_slice(&program);
                Ok(Address {
                    kind: AddressType::P2wpkh,
                    network,
                    hash,
                })
            }
            (Fe32::Q, 32) => Err(unsupported("P2WSH")),
            (Fe32::P, 32) => Err(unsupported("taproot (P2TR)")),
            _ => Err(unsupported("future segwit version")),
        }
    }
}

impl FromStr for Address {
    type Err = AddressError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Address::parse(s)
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let base58 = |version: u8| {
            let mut data = Vec::with_capacity(21);
            data.push(version);
            data.extend_from_slice(&self.hash);
            bs58::encode(data).with_check().into_string()
        };
        match self.kind {
            AddressType::P2pkh => f.write_str(&base58(self.network.p2pkh_version())),
            AddressType::P2shP2wpkh => f.write_str(&base58(self.network.p2sh_version())),
            AddressType::P2wpkh => {
                let s = bech32::segwit::encode_v0(self.network.hrp(), &self.hash)
                    .map_err(|_| fmt::Error)?;
                f.write_str(&s)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_addresses_round_trip() {
        // Addresses of private key 1 (generator point G): BIP-173 examples and
        // bitcoinjs-lib 6.1.7 `payments` output for the same hash.
        for (s, kind, net) in [
            (
                "1BgGZ9tcN4rm9KBzDn7KprQz87SZ26SAMH",
                AddressType::P2pkh,
                Network::Mainnet,
            ),
            (
                "1EHNa6Q4Jz2uvNExL497mE43ikXhwF6kZm",
                AddressType::P2pkh,
                Network::Mainnet,
            ),
            (
                "3JvL6Ymt8MVWiCNHC7oWU6nLeHNJKLZGLN",
                AddressType::P2shP2wpkh,
                Network::Mainnet,
            ),
            (
                "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4",
                AddressType::P2wpkh,
                Network::Mainnet,
            ),
            (
                "tb1qw508d6qejxtdg4y5r3zarvary0c5xw7kxpjzsx",
                AddressType::P2wpkh,
                Network::Testnet,
            ),
            (
                "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080",
                AddressType::P2wpkh,
                Network::Regtest,
            ),
            (
                "mrCDrCybB6J1vRfbwM5hemdJz73FwDBC8r",
                AddressType::P2pkh,
                Network::Testnet,
            ),
            (
                "2NAUYAHhujozruyzpsFRP63mbrdaU5wnEpN",
                AddressType::P2shP2wpkh,
                Network::Testnet,
            ),
        ] {
            let a = Address::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"));
            assert_eq!((a.kind, a.network), (kind, net), "{s}");
            assert_eq!(a.to_string(), s);
        }
    }

    #[test]
    fn unsupported_and_malformed_are_told_apart() {
        let p2wsh = "bc1qrp33g0q5c5txsp9arysrx4k6zdkfs4nce4xj0gdcccefvpysxf3qccfmv3";
        assert!(matches!(
            Address::parse(p2wsh),
            Err(AddressError::Unsupported { .. })
        ));
        let p2tr = "bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vqzk5jj0";
        assert!(matches!(
            Address::parse(p2tr),
            Err(AddressError::Unsupported { .. })
        ));
        assert!(matches!(
            Address::parse("1BgGZ9tcN4rm9KBzDn7KprQz87SZ26SAMM"),
            Err(AddressError::Malformed(_))
        ));
        assert!(Address::parse("").is_err());
    }
}

//! deorch: a decentralized de-orchestrator for QEMU/KVM virtual machines.
//!
//! See `docs/ARCHITECTURE.md` for the code map. Layers, each using only the
//! ones before it: [`model`] → [`manifest`] → [`store`] → [`source`] →
//! [`reconcile`] (through [`driver`] traits) → [`api`] / [`node`] → [`cli`].

// No unsafe code, except one audited `rdtsc` in `qemu::tsc` (allowed there
// by name; `deny` so that one `allow` is possible and nothing else is).
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod admission;
pub mod api;
pub mod bench;
pub mod cli;
pub mod clock;
pub mod dhcp;
pub mod driver;
pub mod gossip;
pub mod http;
pub mod identity;
pub mod manifest;
pub mod model;
pub mod node;
pub mod qemu;
pub mod reconcile;
pub mod schema;
pub mod slot;
pub mod source;
pub mod state_file;
pub mod store;

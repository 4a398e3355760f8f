//! deorch: a decentralized de-orchestrator for QEMU/KVM virtual machines.
//!
//! See `docs/ARCHITECTURE.md` for the code map. Layers, each using only the
//! ones before it:
//!
//! - foundations: [`clock`], [`state_file`], [`slot`], [`accept`], [`memory`];
//! - [`model`] (kinds, names, phases) → [`schema`] → [`manifest`] (the one
//!   parser, inert-field warnings);
//! - [`identity`] (addresses, signatures, AccessPolicy) → [`store`] →
//!   [`admission`] (the one gate to the store) → [`source`] (directory,
//!   git, replica schedule);
//! - [`gossip`] (the radar, sans-IO: membership, document sync, the
//!   placement rule);
//! - [`driver`] (traits, real drivers, fakes) with [`qemu`] and [`dhcp`]
//!   → [`reconcile`] (engine; resolve → plan → execute per kind);
//! - [`api`], [`http`] with [`metrics`] → [`node`] (wires everything,
//!   and alone chooses driver implementations) → [`cli`], [`bench`].

// No unsafe code, except one audited `rdtsc` in `qemu::tsc` and the
// `fcntl(F_SETLEASE)` of `source::dir::writer_has_it_open` (allowed there
// by name; `deny` so that those `allow`s are possible and nothing else is).
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod accept;
pub mod admission;
pub mod api;
pub mod bench;
pub mod bench_cluster;
pub mod bench_fastr;
pub mod bench_history;
pub mod bench_import;
pub mod bench_metrics;
pub mod bench_node;
pub mod bench_relocate;
pub mod bench_tunnel;
pub mod cli;
pub mod clock;
pub mod command;
pub mod dhcp;
pub mod driver;
pub mod fabric;
pub mod fence;
pub mod fuzzing;
pub mod gossip;
pub mod history;
pub mod http;
pub mod identity;
pub mod import;
pub mod manifest;
pub mod memory;
pub mod metrics;
pub mod model;
pub mod node;
pub mod qemu;
pub mod reconcile;
pub mod relocate;
pub mod schema;
pub mod slot;
pub mod source;
pub mod state_file;
pub mod store;

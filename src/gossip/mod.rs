//! Gossip: the radar. Membership (SWIM), node status, desired-state
//! document sync and placement election without a leader, as a sans-IO
//! state machine ([`GossipNode`]) over a [`Transport`] (UDP, or the
//! simulated network of [`sim`]).
//!
//! - [`wire`]: identities, entries (documents, claims, status) and
//!   messages; postcard encoding.
//! - [`store`]: entries merged by version, digest, push queue.
//! - [`membership`]: SWIM failure detection and dissemination.
//! - [`placement`]: the pure ranking function (filters, weighted
//!   rendezvous hashing).
//! - [`verify`]: what is accepted and relayed.
//! - [`trust`]: node identities: who is admitted, signed claims and
//!   statuses.
//! - [`channel`]: the authenticated, encrypted node-to-node channel
//!   (Noise XX, the static key bound to the node's address).
//! - [`node`]: [`GossipNode`], tying them together.
//! - [`transport`]: the [`Transport`] trait, UDP, and the async driver.
//! - [`sim`]: the in-memory network (loss, delay, partitions, virtual
//!   clock, seeded RNG) and a cluster harness for tests and benchmarks.
//! - [`bench`]: `deorch bench gossip`.
//! - [`membership_eval`]: `deorch bench membership`, ours against foca.
//!
//! Algorithms and guarantees: docs/ALGORITHMS.md, "Gossip and placement".
//! Architecture invariant: nothing in here but `transport` touches a
//! socket or reads a clock; `node` is a pure function of its inputs and
//! its seed.

pub mod bench;
pub mod channel;
pub mod members;
pub mod membership;
pub mod membership_eval;
pub mod node;
pub mod placement;
pub mod rng;
pub mod sim;
pub mod store;
pub mod transport;
pub mod trust;
pub mod verify;
pub mod wire;

pub use node::{Event, GossipConfig, GossipNode, Output, RelocationView, Stats};
pub use transport::Transport;
pub use verify::{AcceptAll, SignedManifests, Verifier};
pub use wire::{Claim, DocKey, Document, Millis, NodeAddr, NodeId, NodeStatus, Resources, TagSet};

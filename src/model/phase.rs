//! Lifecycle phases as enums, with the allowed transitions checked in one
//! place ([`advance`]), as cloud-hypervisor's `VmState::valid_transition`.
//!
//! Each kind's phase enum implements [`Phase`]; a reconciler moves a
//! status to its next phase only through [`advance`], which refuses a
//! transition the diagram does not have with a typed error instead of
//! writing it. The diagrams:
//!
//! [`ReadyPhase`] (Spacesuit, Replica: made once, then kept). Every edge
//! exists, because the phase follows what the node finds: a lost volume
//! makes a `Ready` object `Pending` while it is remade, a fixed spec makes a
//! `Failed` one `Ready` in one reconcile.
//!
//! ```text
//!   Pending ◄──► Ready ◄──► Failed ◄──► Pending
//! ```
//!
//! [`RelocationPhase`]: forward only, or to `Failed`; `Succeeded` and
//! `Failed` are final (a new relocation is a new object).
//!
//! ```text
//!   Pending ──► Electing ──► Preparing ──► Copying ──► Switching ──► Succeeded
//!      │           │             │            │            │
//!      └───────────┴─────────────┴────────────┴────────────┴───────► Failed
//! ```

use std::fmt::Debug;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A phase of some kind's lifecycle.
pub trait Phase: Copy + Eq + Debug {
    /// The kind it belongs to (for errors).
    const KIND: &'static str;
    /// Whether the diagram has an edge `self → next`. Staying in a phase
    /// is always allowed and not asked.
    fn can_become(self, next: Self) -> bool;
}

/// A transition the diagram does not have.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}: no transition from {from} to {to}")]
pub struct InvalidTransition {
    /// The kind whose phase it is.
    pub kind: &'static str,
    /// The phase it is in.
    pub from: String,
    /// The phase it was asked to take.
    pub to: String,
}

/// `next` if the diagram allows `current → next`; a status without a phase
/// yet may take any.
pub fn advance<P: Phase>(current: Option<P>, next: P) -> Result<P, InvalidTransition> {
    match current {
        Some(from) if from != next && !from.can_become(next) => Err(InvalidTransition {
            kind: P::KIND,
            from: format!("{from:?}"),
            to: format!("{next:?}"),
        }),
        _ => Ok(next),
    }
}

/// How far a Spacesuit's or a Replica's volumes are made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
pub enum ReadyPhase {
    /// Being made, or waiting for what it is made from.
    #[default]
    Pending,
    /// Made.
    Ready,
    /// Cannot be made as declared; the `Ready` condition says why.
    Failed,
}

impl Phase for ReadyPhase {
    const KIND: &'static str = "Spacesuit/Replica";
    fn can_become(self, _next: ReadyPhase) -> bool {
        true
    }
}

/// How far a Relocation got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
pub enum RelocationPhase {
    /// Accepted, not started.
    #[default]
    Pending,
    /// The radar elects the receiving satellite.
    Electing,
    /// The receiver makes the VM's disks and a paused QEMU to take it.
    Preparing,
    /// Memory and disks are copied to the receiver.
    Copying,
    /// The receiver takes over the VM.
    Switching,
    /// The VM runs on the receiver.
    Succeeded,
    /// Stopped; the VM runs where it ran before.
    Failed,
}

impl Phase for RelocationPhase {
    const KIND: &'static str = "Relocation";
    fn can_become(self, next: RelocationPhase) -> bool {
        use RelocationPhase::*;
        matches!(
            (self, next),
            (Pending, Electing | Preparing)
                | (Electing, Preparing)
                | (Preparing, Copying)
                | (Copying, Switching)
                | (Switching, Succeeded)
                | (Pending | Electing | Preparing | Copying | Switching, Failed)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Door {
        Open,
        Closed,
        Locked,
    }

    impl Phase for Door {
        const KIND: &'static str = "Door";
        fn can_become(self, next: Door) -> bool {
            matches!(
                (self, next),
                (Door::Open, Door::Closed) | (Door::Closed, Door::Open | Door::Locked)
            )
        }
    }

    #[test]
    fn advance_follows_the_diagram_and_names_the_refused_edge() {
        assert_eq!(advance(None, Door::Locked), Ok(Door::Locked));
        assert_eq!(advance(Some(Door::Open), Door::Open), Ok(Door::Open));
        assert_eq!(advance(Some(Door::Open), Door::Closed), Ok(Door::Closed));
        let e = advance(Some(Door::Open), Door::Locked).unwrap_err();
        assert_eq!(e.to_string(), "Door: no transition from Open to Locked");
    }

    #[test]
    fn a_relocation_moves_forward_or_fails_and_then_stays() {
        use RelocationPhase::*;
        let order = [Pending, Electing, Preparing, Copying, Switching, Succeeded];
        for w in order.windows(2) {
            assert_eq!(advance(Some(w[0]), w[1]), Ok(w[1]));
        }
        for p in [Pending, Electing, Preparing, Copying, Switching] {
            assert_eq!(advance(Some(p), Failed), Ok(Failed));
        }
        for (from, to) in [
            (Copying, Electing),
            (Pending, Switching),
            (Succeeded, Failed),
            (Failed, Pending),
            (Succeeded, Pending),
        ] {
            assert!(advance(Some(from), to).is_err(), "{from:?} -> {to:?}");
        }
    }

    #[test]
    fn phases_serialize_as_the_strings_status_readers_match() {
        let s = serde_json::to_value([ReadyPhase::Pending, ReadyPhase::Ready, ReadyPhase::Failed]);
        assert_eq!(
            s.unwrap(),
            serde_json::json!(["Pending", "Ready", "Failed"])
        );
        let r: RelocationPhase = serde_json::from_value(serde_json::json!("Switching")).unwrap();
        assert_eq!(r, RelocationPhase::Switching);
    }
}

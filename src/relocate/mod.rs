//! Relocation: a VM moves to another satellite with its storage.
//!
//! Built so far: [`live`], the data path between two QEMUs (disks
//! mirrored over NBD while the guest runs, memory migrated, the switch),
//! tested with the tiny guest in `tests/relocate_live.rs`. Not built yet:
//! the `Relocation` protocol between nodes (election of the receiver,
//! phases in status, the claim moving at the switch), the tunnel that
//! carries the streams over the authenticated node channel, zfs send
//! and libvirt, failure handling across daemons (issue 15).

pub mod live;
pub mod tunnel;

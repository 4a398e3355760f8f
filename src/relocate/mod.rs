//! Relocation: a VM moves to another satellite with its storage.
//!
//! Built so far: [`live`], the data path between two QEMUs (disks
//! mirrored over NBD while the guest runs, memory migrated, the switch),
//! [`offline`], the stop-copy-start path (`qemu-nbd` on the receiver,
//! `qemu-img convert` skipping zeros on the sender), [`session`], the
//! same live steps with each node driving its own QEMU and agreeing on
//! each step over a control tunnel, and [`tunnel`], the authenticated encrypted stream between admitted
//! nodes that carries it; tested together with the tiny guest in
//! `tests/relocate_live.rs`. The receiver is elected by the radar
//! (`gossip::node`, `track_relocations`). Not built yet: the node
//! daemons running a session when elected, phases in status, the claim moving at the
//! switch, zfs send and libvirt, failure handling across daemons
//! (issue 15).

pub mod agent;
pub mod live;
pub mod offline;
pub mod session;
pub mod tunnel;

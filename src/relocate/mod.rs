//! Relocation: a VM moves to another satellite with its storage.
//!
//! [`agent`] is what a node runs: it carries out the relocations the
//! radar gives it, as sender or receiver, over [`tunnel`]s (Noise over
//! TCP on the gossip address), through [`session`] (each node drives its
//! own QEMU and they agree on each step) and [`live`] (the QMP steps:
//! disks mirrored over NBD while the guest runs, memory migrated, the
//! switch). [`offline`] is the stop-copy-start data path (`qemu-nbd` on
//! the receiver, `qemu-img convert` skipping zeros on the sender). The receiver is elected by the radar
//! (`gossip::node`, `track_relocations`). Tests: `tests/relocate_live.rs`
//! (the data path), `tests/relocate_nodes.rs` (two daemons, faults).
//! Both hypervisor drivers take part (libvirt through deorch's own QMP
//! monitor of each domain). Moves between zfs nodes stream the volumes
//! (`zfs send`) while the VM runs (live: its writes held on a transfer
//! overlay meanwhile). The agent also runs FASTR (`agent::fastr`):
//! incremental copies of running VMs' volumes on other nodes, and the
//! restore a failover starts from.

pub mod agent;
pub mod live;
pub mod offline;
pub mod session;
pub mod tunnel;

//! QEMU plumbing shared by the hypervisor driver: the QMP client.
//! (The driver itself implements `driver::Hypervisor` on top of it.)

pub mod qmp;

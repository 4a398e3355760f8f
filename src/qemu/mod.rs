//! QEMU plumbing shared by the hypervisor driver: the QMP client and the
//! accelerator probe. (The driver itself implements `driver::Hypervisor` on
//! top of them.)

pub mod cmdline;
pub mod console;
pub mod overlay;
pub mod probe;
pub mod qmp;
pub mod tsc;

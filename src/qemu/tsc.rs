//! The guest clock under TCG.
//!
//! Under TCG a guest's `rdtsc` returns the host's time-stamp counter (QEMU's
//! `cpu_get_host_ticks`), so the guest TSC runs at the host's TSC
//! frequency. A Linux guest still calibrates it at boot against the PIT,
//! which it can only do if its vCPU gets the host CPU for a few
//! milliseconds without a break. On a busy host that fails; on a `pc`
//! machine the kernel falls back to the HPET or ACPI PM timer, but
//! `microvm` has neither, so the kernel marks the TSC unstable and hangs
//! setting up the timer interrupt (measured here: every microvm boot, three
//! at a time beside two busy loops, hung at "APIC: Switch to symmetric I/O
//! mode setup"). Later the clocksource watchdog, which compares the TSC with
//! jiffies that stall whenever the vCPU is descheduled, marks it unstable
//! again.
//!
//! Both facts are the host's, not the guest's, so deorch states them on the
//! kernel command line of a directly booted TCG guest:
//! `tsc_early_khz=<host TSC kHz>` (no calibration) and `tsc=reliable` (no
//! watchdog), when the host's TSC is constant and keeps running in deep
//! C-states (`constant_tsc`, `nonstop_tsc`), and only where the spacesuit's
//! own command line says nothing about the TSC. Under KVM the guest has
//! kvm-clock and nothing is added.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::probe::Accel;

/// The host's TSC frequency in kHz, measured once per process; `None` when
/// the host's TSC is not constant and non-stop (or not x86-64).
pub fn host_khz() -> Option<u64> {
    static KHZ: OnceLock<Option<u64>> = OnceLock::new();
    *KHZ.get_or_init(|| {
        let flags = std::fs::read_to_string("/proc/cpuinfo").ok()?;
        if !invariant_tsc(&flags) {
            return None;
        }
        measure()
    })
}

/// Whether `/proc/cpuinfo` text says the TSC is constant and non-stop.
fn invariant_tsc(cpuinfo: &str) -> bool {
    let flags = cpuinfo
        .lines()
        .find(|l| l.starts_with("flags"))
        .unwrap_or("");
    let has = |f: &str| flags.split_whitespace().any(|w| w == f);
    has("constant_tsc") && has("nonstop_tsc")
}

/// The crate's only `unsafe`: `rdtsc` reads a counter, takes no pointers
/// and has no preconditions on x86-64 (every x86-64 CPU has it).
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
fn rdtsc() -> u64 {
    // SAFETY: see above; the intrinsic is `unsafe` only because all of
    // `core::arch` is.
    unsafe { core::arch::x86_64::_rdtsc() }
}

#[cfg(target_arch = "x86_64")]
fn measure() -> Option<u64> {
    let tsc = rdtsc;
    // Three 20 ms windows, the median: a window is bracketed by one read of
    // each clock at each end, so its error is the few hundred ns between
    // the two reads (tens of ppm), unless the thread was preempted between
    // them, which the median discards.
    let mut samples: Vec<u64> = (0..3)
        .map(|_| {
            let (t0, c0) = (Instant::now(), tsc());
            std::thread::sleep(Duration::from_millis(20));
            let (c1, t1) = (tsc(), Instant::now());
            let ns = t1.duration_since(t0).as_nanos() as u64;
            (c1.wrapping_sub(c0) as u128 * 1_000_000 / ns.max(1) as u128) as u64
        })
        .collect();
    samples.sort_unstable();
    Some(samples[1]).filter(|&k| k > 100_000)
}

#[cfg(not(target_arch = "x86_64"))]
fn measure() -> Option<u64> {
    None
}

/// The kernel command line deorch hands QEMU for a directly booted guest:
/// the spacesuit's `cmdline` (or the default, `console=ttyS0`), plus, under TCG with a
/// known host TSC, `tsc_early_khz=` and `tsc=reliable` unless the
/// spacesuit's line already sets either.
pub fn guest_cmdline(cmdline: Option<&str>, accel: Accel, tsc_khz: Option<u64>) -> String {
    let base = cmdline
        .unwrap_or(super::cmdline::DEFAULT_KERNEL_CMDLINE)
        .trim();
    let says_tsc = base
        .split_whitespace()
        .any(|w| w.starts_with("tsc=") || w.starts_with("tsc_early_khz="));
    match (accel, tsc_khz) {
        (Accel::Tcg, Some(khz)) if !says_tsc => {
            format!("{base} tsc_early_khz={khz} tsc=reliable")
        }
        _ => base.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcg_gets_the_host_tsc_and_kvm_or_an_explicit_line_do_not() {
        assert_eq!(
            guest_cmdline(Some("console=ttyS0 quiet"), Accel::Tcg, Some(2445430)),
            "console=ttyS0 quiet tsc_early_khz=2445430 tsc=reliable"
        );
        assert_eq!(
            guest_cmdline(Some("console=ttyS0 quiet"), Accel::Kvm, Some(2445430)),
            "console=ttyS0 quiet"
        );
        assert_eq!(
            guest_cmdline(None, Accel::Tcg, None),
            "console=ttyS0",
            "unknown host TSC: nothing added"
        );
        assert_eq!(
            guest_cmdline(Some("quiet tsc=unstable"), Accel::Tcg, Some(1)),
            "quiet tsc=unstable",
            "the spacesuit's own word wins"
        );
        assert_eq!(
            guest_cmdline(Some("tsc_early_khz=1000000"), Accel::Tcg, Some(2)),
            "tsc_early_khz=1000000"
        );
    }

    #[test]
    fn only_a_constant_nonstop_tsc_counts() {
        assert!(invariant_tsc(
            "processor\t: 0\nflags\t\t: fpu tsc constant_tsc nonstop_tsc rdtscp\n"
        ));
        assert!(!invariant_tsc("flags\t\t: fpu tsc constant_tsc\n"));
        assert!(!invariant_tsc(
            "flags\t\t: fpu tsc nonstop_tsc_s3 constant_tsc\n"
        ));
        assert!(!invariant_tsc(""));
    }

    /// The measurement agrees with what the kernel found (cpuinfo's
    /// "cpu MHz" is the TSC rate on hosts with `tsc_known_freq` and no
    /// frequency scaling; elsewhere it may be the current core clock, so
    /// only a loose bound is checked there).
    #[test]
    fn the_measured_host_tsc_is_plausible() {
        let Some(khz) = host_khz() else {
            let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
            assert!(
                !invariant_tsc(&info) || cfg!(not(target_arch = "x86_64")),
                "invariant TSC but no measurement"
            );
            return;
        };
        assert!((100_000..10_000_000).contains(&khz), "{khz} kHz");
        let info = std::fs::read_to_string("/proc/cpuinfo").unwrap();
        let known = info
            .lines()
            .find(|l| l.starts_with("flags"))
            .is_some_and(|l| l.split_whitespace().any(|w| w == "tsc_known_freq"));
        let mhz: Option<f64> = info
            .lines()
            .find(|l| l.starts_with("cpu MHz"))
            .and_then(|l| l.split(':').nth(1))
            .and_then(|v| v.trim().parse().ok());
        let scaling = std::path::Path::new("/sys/devices/system/cpu/cpu0/cpufreq").exists();
        if let (true, false, Some(mhz)) = (known, scaling, mhz) {
            let err = (khz as f64 / 1000.0 - mhz).abs() / mhz;
            assert!(err < 0.002, "measured {khz} kHz, cpuinfo {mhz} MHz");
        }
    }
}

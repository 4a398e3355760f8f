//! `deorch bench import`: `deorch import` of a disk image beside plain
//! `qemu-img convert -O qcow2` of the same file, in the same run.
//!
//! The disk is `--mib` MiB, three MiB of random data in every four (the
//! fourth left zero, as a used disk has holes), converted once into the
//! `--source` format. Then the paths alternate, each run starting with
//! another one (the page cache serves all alike): deorch's (probe,
//! convert with progress, SHA-256 of the image, rename; the library call
//! `deorch import` makes) and qemu-img's (the conversion alone). The
//! figure is MiB of disk (virtual size) per second, p50 over the runs;
//! deorch's time is also split into its conversion and its hashing, and
//! measured without the hash (`--no-sha256`) as a third path. With
//! `--disks N` the import is an appliance (an `.ovf` beside N copies of
//! the disk), whose disks' hashes overlap the next disk's conversion, and
//! qemu-img converts the N disks in turn.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context};

use crate::import::{self, Progress, Request, Target};

/// `deorch bench import`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Size of the disk in MiB.
    #[arg(long, default_value_t = 1024)]
    pub mib: u64,
    /// Runs per path (alternating; the figure is the p50).
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// Format of the disk imported: vmdk, vmdk-stream (streamOptimized),
    /// vhd, vhdx, qcow2 or raw.
    #[arg(long, default_value = "vmdk")]
    pub source: String,
    /// Scratch directory (default: the system's temporary directory).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Disks of `--mib` each: more than one makes an appliance (an `.ovf`
    /// beside its disks), imported at once; qemu-img converts each disk
    /// in turn.
    #[arg(long, default_value_t = 1)]
    pub disks: usize,
}

/// An OVF descriptor naming `n` disks `disk1.EXT` ... of `mib` MiB.
fn ovf(n: usize, ext: &str, mib: u64) -> String {
    let mut refs = String::new();
    let mut disks = String::new();
    for i in 1..=n {
        refs.push_str(&format!(
            "    <File ovf:id=\"f{i}\" ovf:href=\"disk{i}.{ext}\"/>\n"
        ));
        disks.push_str(&format!(
            "    <Disk ovf:diskId=\"d{i}\" ovf:fileRef=\"f{i}\" ovf:capacity=\"{mib}\" ovf:capacityAllocationUnits=\"byte * 2^20\"/>\n"
        ));
    }
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <Envelope xmlns=\"http://schemas.dmtf.org/ovf/envelope/1\" xmlns:ovf=\"http://schemas.dmtf.org/ovf/envelope/1\">\n\
         \x20 <References>\n{refs}  </References>\n\
         \x20 <DiskSection>\n    <Info>disks</Info>\n{disks}  </DiskSection>\n\
         \x20 <VirtualSystem ovf:id=\"bench\">\n    <Info>bench</Info>\n    <VirtualHardwareSection>\n      <Info>hardware</Info>\n    </VirtualHardwareSection>\n  </VirtualSystem>\n\
         </Envelope>\n"
    )
}

/// Times the steps of an import: (what, seconds).
#[derive(Default)]
struct Steps {
    current: Option<(String, Instant)>,
    done: Vec<(String, f64)>,
}

impl Steps {
    fn close(&mut self) {
        if let Some((what, t)) = self.current.take() {
            self.done.push((what, t.elapsed().as_secs_f64()));
        }
    }
    fn seconds(&self, prefix: &str) -> f64 {
        self.done
            .iter()
            .filter(|(w, _)| w.starts_with(prefix))
            .map(|(_, s)| s)
            .sum()
    }
}

impl Progress for Steps {
    fn step(&mut self, what: &str, _: u64) {
        self.close();
        self.current = Some((what.to_string(), Instant::now()));
    }
    fn done(&mut self, _: u64) {}
}

fn run_ok(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// A raw disk of `mib` MiB: random data in three MiB of every four.
fn write_raw(path: &Path, mib: u64) -> anyhow::Result<()> {
    use std::io::{Seek, SeekFrom, Write};
    let mut f = std::fs::File::create(path)?;
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut block = vec![0u8; 1 << 20];
    for i in 0..mib {
        if i % 4 == 3 {
            f.seek(SeekFrom::Current(1 << 20))?;
            continue;
        }
        for chunk in block.chunks_exact_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            chunk.copy_from_slice(&state.to_le_bytes());
        }
        f.write_all(&block)?;
    }
    f.set_len(mib << 20)?;
    Ok(())
}

fn p50(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

/// Run the benchmark and print its table.
pub fn run(a: Args) -> anyhow::Result<()> {
    let (format, opts): (&str, &[&str]) = match a.source.as_str() {
        "vmdk" => ("vmdk", &[]),
        "vmdk-stream" => ("vmdk", &["-o", "subformat=streamOptimized"]),
        "vhd" => ("vpc", &[]),
        "vhdx" => ("vhdx", &[]),
        "qcow2" => ("qcow2", &[]),
        "raw" => ("raw", &[]),
        other => bail!("--source {other:?}: expected vmdk, vmdk-stream, vhd, vhdx, qcow2 or raw"),
    };
    anyhow::ensure!(
        a.runs > 0 && a.mib > 0 && a.disks > 0,
        "--runs, --mib and --disks must be at least 1"
    );
    let base = a.dir.clone().unwrap_or_else(std::env::temp_dir);
    let dir = base.join(format!("deorch-bench-import-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = bench(&a, &dir, format, opts);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn bench(a: &Args, dir: &Path, format: &str, opts: &[&str]) -> anyhow::Result<()> {
    let raw = dir.join("disk.raw");
    write_raw(&raw, a.mib)?;
    let src = dir.join(format!("disk.{}", a.source));
    if format == "raw" {
        std::fs::rename(&raw, &src)?;
    } else {
        run_ok(
            Command::new("qemu-img")
                .args(["convert", "-f", "raw", "-O", format])
                .args(opts)
                .arg(&raw)
                .arg(&src),
        )?;
        std::fs::remove_file(&raw)?;
    }
    let src_bytes = std::fs::metadata(&src)?.len();
    // Several disks: copies of the first, named by an OVF beside them.
    let (file, sources) = if a.disks == 1 {
        (src.clone(), vec![src.clone()])
    } else {
        let ext = a.source.replace("vmdk-stream", "vmdk");
        let mut all = Vec::new();
        for i in 1..=a.disks {
            let d = dir.join(format!("disk{i}.{ext}"));
            std::fs::copy(&src, &d)?;
            all.push(d);
        }
        std::fs::remove_file(&src)?;
        let f = dir.join("bench.ovf");
        std::fs::write(&f, ovf(a.disks, &ext, a.mib))?;
        (f, all)
    };
    let images = dir.join("images");
    let peer_out = dir.join("peer.qcow2");
    let request = |sha256: bool| Request {
        file: file.clone(),
        name: "bench".into(),
        namespace: "default".into(),
        images: images.clone(),
        format: None,
        target: Target::Qcow2,
        replace: true,
        sha256,
    };
    // (total, conversion, hashing) seconds.
    let deorch_once = |sha256: bool| -> anyhow::Result<(f64, f64, f64)> {
        let mut steps = Steps::default();
        let t = Instant::now();
        import::import(&request(sha256), &mut steps)?;
        let total = t.elapsed().as_secs_f64();
        steps.close();
        let _ = std::fs::remove_dir_all(&images);
        Ok((total, steps.seconds("convert"), steps.seconds("sha256")))
    };
    let peer_once = || -> anyhow::Result<(f64, f64, f64)> {
        let t = Instant::now();
        for src in &sources {
            let _ = std::fs::remove_file(&peer_out);
            run_ok(
                Command::new("qemu-img")
                    .args(["convert", "-O", "qcow2"])
                    .arg(src)
                    .arg(&peer_out),
            )?;
        }
        let s = t.elapsed().as_secs_f64();
        std::fs::remove_file(&peer_out)?;
        Ok((s, s, 0.0))
    };
    const PATHS: [&str; 3] = [
        "`deorch import` (probe, convert, SHA-256)",
        "`deorch import --no-sha256`",
        "`qemu-img convert -O qcow2`",
    ];
    let once = |path: usize| match path {
        0 => deorch_once(true),
        1 => deorch_once(false),
        _ => peer_once(),
    };
    // One unrecorded run of each: the source in the page cache for all.
    for p in 0..PATHS.len() {
        once(p)?;
    }
    let mut times: Vec<Vec<(f64, f64, f64)>> = vec![Vec::new(); PATHS.len()];
    for i in 0..a.runs {
        // Each run starts with another path.
        for k in 0..PATHS.len() {
            let p = (i + k) % PATHS.len();
            times[p].push(once(p)?);
        }
        eprintln!(
            "run {}: deorch import {:.2} s (convert {:.2} s, sha256 {:.2} s), --no-sha256 {:.2} s, qemu-img convert {:.2} s",
            i + 1,
            times[0][i].0,
            times[0][i].1,
            times[0][i].2,
            times[1][i].0,
            times[2][i].0
        );
    }
    let mib = (a.mib * a.disks as u64) as f64;
    let col = |p: usize, f: fn(&(f64, f64, f64)) -> f64| p50(times[p].iter().map(f).collect());
    let peer = col(2, |t| t.0);
    println!(
        "source: {} disk(s) of {} MiB {} ({} bytes on disk each), {} runs per path, alternating; MiB of disk per second, p50",
        a.disks, a.mib, a.source, src_bytes, a.runs
    );
    println!("| path | p50 s | p50 MiB/s | vs qemu-img |");
    println!("|---|---|---|---|");
    for (p, name) in PATHS.iter().enumerate() {
        let t = col(p, |t| t.0);
        println!("| {name} | {t:.2} | {:.0} | {:.2}x |", mib / t, peer / t);
        if p == 0 {
            let (c, h) = (col(0, |t| t.1), col(0, |t| t.2));
            println!(
                "| of which the conversion (`qemu-img convert -p`) | {c:.2} | {:.0} | {:.2}x |",
                mib / c,
                peer / c
            );
            println!("| of which the SHA-256 after the last conversion | {h:.2} | | |");
        }
    }
    Ok(())
}

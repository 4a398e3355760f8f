//! `deorch bench history`: what the history log ([`crate::history`])
//! costs an apply.
//!
//! The same apply path twice, in one process: a manifest parsed and
//! validated by the one parser, admitted ([`crate::admission`]: signature
//! check, authorisation, generation) and committed to a store (one
//! fsync'd redb transaction); one store has the history hook (one more
//! `write` of the version's record, its `fdatasync` on the log's own
//! thread, which the next applies meet on the disk), the other none. The
//! two alternate apply by apply, each changing one of `--objects`
//! objects, so both see the same disk and the same moment. Beside them,
//! in the same run: one bare `write` + `fdatasync` of a record-sized
//! buffer, what a log flushed inside each apply would add at least.

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;

use crate::admission::{Admission, Batch, Trust};
use crate::bench::percentiles;
use crate::history::{History, Retention};
use crate::store::{SourceId, Store};

/// `deorch bench history`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Applies per mode.
    #[arg(long, default_value_t = 2000)]
    pub count: usize,
    /// Distinct objects the applies cycle through.
    #[arg(long, default_value_t = 100)]
    pub objects: usize,
}

fn doc(i: usize, version: usize) -> String {
    format!(
        "apiVersion: deorch.dev/v1alpha1\nkind: VirtualMachine\nmetadata:\n  name: vm-{i:04}\n  labels:\n    app: bench\nspec:\n  cpu: 2\n  memory: {}Mi\n  disks:\n    - name: root\n      source:\n        spacesuit: tiny\n  nics:\n    - name: eth0\n      network: default\n",
        128 + version
    )
}

fn apply(admission: &Admission, text: &str) -> anyhow::Result<Duration> {
    let t0 = Instant::now();
    let mut batch = Batch::new(SourceId("bench".into()), Trust::Local);
    batch.parse("bench.yaml", text);
    let outcome = admission.admit(batch)?;
    let took = t0.elapsed();
    if outcome.changed().count() != 1 {
        bail!(
            "an apply of the bench changed nothing: {:?}",
            outcome.problems()
        );
    }
    Ok(took)
}

/// Run the bench and print its table.
pub fn run(args: Args) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("deorch-bench-history-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("on"))?;
    std::fs::create_dir_all(dir.join("off"))?;
    let on_store = Arc::new(Store::open(&dir.join("on/store.redb"))?);
    let history = Arc::new(History::open(
        &dir.join("on").join(crate::history::FILE),
        Retention::default(),
    )?);
    on_store.set_commit_hook(Some(history.hook()));
    let off_store = Arc::new(Store::open(&dir.join("off/store.redb"))?);
    let on = Admission::new(on_store, Default::default());
    let off = Admission::new(off_store, Default::default());
    let objects = args.objects.max(1);
    // Warm up both (first versions of every object, caches, the file).
    for i in 0..objects {
        apply(&on, &doc(i, 0))?;
        apply(&off, &doc(i, 0))?;
    }
    let log_before = std::fs::metadata(history.path())?.len();
    let mut with = Vec::with_capacity(args.count);
    let mut without = Vec::with_capacity(args.count);
    for n in 0..args.count {
        let text = doc(n % objects, 1 + n / objects);
        // Alternate which goes first.
        if n % 2 == 0 {
            with.push(apply(&on, &text)?);
            without.push(apply(&off, &text)?);
        } else {
            without.push(apply(&off, &text)?);
            with.push(apply(&on, &text)?);
        }
    }
    let log_bytes = std::fs::metadata(history.path())?
        .len()
        .saturating_sub(log_before);
    let record = (log_bytes / args.count.max(1) as u64).max(1) as usize;
    // The floor: one more durable write of a record's size.
    let mut raw = Vec::with_capacity(args.count);
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("raw.log"))?;
    let buf = vec![0x5au8; record];
    for _ in 0..args.count {
        let t0 = Instant::now();
        f.write_all(&buf)?;
        f.sync_data()?;
        raw.push(t0.elapsed());
    }
    drop(f);
    let on_p = percentiles(&mut with);
    let off_p = percentiles(&mut without);
    let raw_p = percentiles(&mut raw);
    let _ = std::fs::remove_dir_all(&dir);

    println!(
        "apply latency (parse + validate + admission + store fsync), {} applies per mode over {objects} objects, alternating:",
        args.count
    );
    println!("| what | p50 ms | p95 ms | p99 ms |\n|---|---|---|---|");
    println!(
        "| history off | {:.3} | {:.3} | {:.3} |",
        off_p.p50, off_p.p95, off_p.p99
    );
    println!(
        "| history on (+ one write of the record; its fdatasync on the log's own thread) | {:.3} | {:.3} | {:.3} |",
        on_p.p50, on_p.p95, on_p.p99
    );
    println!(
        "| bare write + fdatasync of {record} bytes (what a log flushed inside each apply would add at least) | {:.3} | {:.3} | {:.3} |",
        raw_p.p50, raw_p.p95, raw_p.p99
    );
    println!(
        "history overhead at p50: {:+.1} % ({record} bytes logged per version)",
        (on_p.p50 / off_p.p50 - 1.0) * 100.0
    );
    Ok(())
}

//! A node is SIGKILLed at random moments while clients apply 1,000 changes
//! through the local API. After every restart, every change the node had
//! acknowledged is there with its generation, and the store opens cleanly.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{vm_yaml, Node, Rng};
use deorch::api::{Request, Response};

#[test]
fn kill_minus_nine_during_1000_applies_loses_nothing_acknowledged() {
    let seed = std::env::var("DEORCH_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_dec0_de42_u64);
    eprintln!("seed {seed} (replay with DEORCH_CRASH_SEED={seed})");
    let mut rng = Rng(seed);
    let mut node = Node::new("crash");
    node.start();

    // name -> (acknowledged generation, acknowledged memory)
    let mut acked: BTreeMap<String, (i64, String)> = BTreeMap::new();
    let mut applies = 0;
    let mut kills = 0;
    let started = Instant::now();
    while applies < 1000 {
        // A killer fires after a random delay while applies are in flight.
        let pid = node.child.as_ref().unwrap().id();
        let delay = Duration::from_millis(5 + rng.below(120));
        let fired = Arc::new(AtomicBool::new(false));
        let killer = {
            let fired = fired.clone();
            std::thread::spawn(move || {
                std::thread::sleep(delay);
                // Flag first: from here on, a failed apply is the kill's doing.
                fired.store(true, Ordering::SeqCst);
                let _ = std::process::Command::new("kill")
                    .args(["-9", &pid.to_string()])
                    .status();
            })
        };
        loop {
            let name = format!("vm-{}", rng.below(60));
            let memory = format!("{}Mi", 64 + rng.below(1000));
            match node.call(&Request::Apply {
                filename: "crash.yaml".into(),
                yaml: vm_yaml(&name, &memory),
                dry_run: false,
            }) {
                Ok(Response::Applied { objects }) => {
                    applies += 1;
                    acked.insert(name, (objects[0].generation, memory));
                }
                Ok(other) => panic!("unexpected answer {other:?}"),
                Err(_) if fired.load(Ordering::SeqCst) => break,
                Err(e) => {
                    let status = node.child.as_mut().unwrap().try_wait();
                    panic!("apply of {name} failed without a kill: {e} (node: {status:?}, round {kills}, {applies} applies)")
                }
            }
            if applies >= 1000 {
                break;
            }
        }
        killer.join().unwrap();
        node.kill(); // reap (and kill, if the killer fired after we stopped)
        kills += 1;
        node.start();
        check(&node, &acked);
    }
    eprintln!(
        "{applies} acknowledged applies, {kills} kills, {} objects, {:.1}s",
        acked.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(kills >= 10, "too few kills ({kills}) to mean anything");
}

fn check(node: &Node, acked: &BTreeMap<String, (i64, String)>) {
    let records = node.records();
    let by_name: BTreeMap<&str, _> = records.iter().map(|r| (r.key.name.as_str(), r)).collect();
    for (name, (generation, memory)) in acked {
        let r = by_name
            .get(name.as_str())
            .unwrap_or_else(|| panic!("acknowledged {name} lost after kill -9"));
        assert!(
            r.generation >= *generation,
            "{name}: generation went back from {generation} to {}",
            r.generation
        );
        if r.generation == *generation {
            // Quantities are stored normalised (1024Mi reads back as 1Gi).
            let stored: deorch::model::Quantity = r.object["spec"]["memory"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap();
            assert_eq!(
                stored,
                memory.parse().unwrap(),
                "{name}: content of gen {generation}"
            );
        }
    }
}

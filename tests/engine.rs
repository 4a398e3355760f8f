//! The engine with the real store (in a temp dir) and the fake drivers:
//! injected failures, backoff, recovery, status conditions and
//! observedGeneration, restart policy, deletion, isolation of failures.

use std::sync::Arc;
use std::time::{Duration, Instant};

use deorch::driver::fake::{FakeHypervisor, FakeNet, FakeStorage};
use deorch::driver::StopReason;
use deorch::manifest::parse_str;
use deorch::model::{Kind, ObjectKey};
use deorch::reconcile::engine::ReconcileStarted;
use deorch::reconcile::{Drivers, Elected, Engine, EngineConfig, Placement};
use deorch::store::{SourceId, Store};
use serde_json::Value;
use tokio::sync::watch;

struct World {
    store: Arc<Store>,
    hv: Arc<FakeHypervisor>,
    storage: Arc<FakeStorage>,
    net: Arc<FakeNet>,
    engine: Option<Engine>,
    stop: watch::Sender<bool>,
    _dir: TempDir,
}

struct TempDir(std::path::PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn world(tag: &str) -> World {
    world_on(tag, "sat-1", None)
}

fn world_with(tag: &str, configure: impl FnOnce(&mut EngineConfig)) -> World {
    world_full(tag, "sat-1", None, configure)
}

/// A world whose engine is node `node`, with the cluster's election
/// `placement` (none: a standalone node).
fn world_on(tag: &str, node: &str, placement: Option<Arc<dyn Placement>>) -> World {
    world_full(tag, node, placement, |_| {})
}

fn world_full(
    tag: &str,
    node: &str,
    placement: Option<Arc<dyn Placement>>,
    configure: impl FnOnce(&mut EngineConfig),
) -> World {
    let dir = std::env::temp_dir().join(format!("deorch-engine-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let store = Arc::new(Store::open(&dir.join("store.redb")).unwrap());
    let hv = Arc::new(FakeHypervisor::default());
    let storage = Arc::new(FakeStorage::default());
    let net = Arc::new(FakeNet::default());
    let drivers = Drivers {
        hypervisor: hv.clone(),
        storage: storage.clone(),
        net: net.clone(),
        dhcp: None,
    };
    let mut config = EngineConfig {
        node_name: node.into(),
        backoff_base: Duration::from_millis(40),
        backoff_max: Duration::from_secs(2),
        vm_poll: Duration::from_millis(50),
        blocked_retry: Duration::from_millis(100),
        ..EngineConfig::default()
    };
    configure(&mut config);
    let engine = Engine::with_placement(store.clone(), drivers, config, placement);
    let (stop, _) = watch::channel(false);
    World {
        store,
        hv,
        storage,
        net,
        engine: Some(engine),
        stop,
        _dir: TempDir(dir),
    }
}

impl World {
    fn run(&mut self) {
        let engine = self.engine.take().unwrap();
        tokio::spawn(engine.run(self.stop.subscribe()));
    }
    fn apply(&self, yaml: &str) -> i64 {
        let parsed = parse_str(std::path::Path::new("test.yaml"), yaml);
        assert!(parsed.diagnostics.is_empty(), "{:?}", parsed.diagnostics);
        let mut g = 0;
        for d in parsed.documents {
            g = self
                .store
                .apply(&d.object, &SourceId("test".into()))
                .unwrap()
                .generation;
        }
        g
    }
    fn status(&self, kind: Kind, name: &str) -> Value {
        self.store
            .get(&ObjectKey::new(kind, None, name))
            .and_then(|r| r.status)
            .unwrap_or(Value::Null)
    }
    async fn wait(&self, what: &str, mut f: impl FnMut(&World) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !f(self) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

fn condition<'a>(status: &'a Value, t: &str) -> Option<&'a Value> {
    status["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == t)
}

const BASE: &str = r#"
apiVersion: deorch.dev/v1alpha1
kind: Network
metadata: {name: default}
spec:
  mtu: 1400
  ipv4: {subnet: 10.42.0.0/24, gateway: 10.42.0.1}
---
apiVersion: deorch.dev/v1alpha1
kind: Spacesuit
metadata: {name: base}
spec:
  source: {image: {path: /images/base.qcow2}}
  cpu: 2
  memory: 256Mi
"#;

fn vm(name: &str, extra: &str) -> String {
    format!(
        "apiVersion: deorch.dev/v1alpha1\nkind: VirtualMachine\nmetadata: {{name: {name}}}\nspec:\n  spacesuit: base\n  disks:\n    - name: root\n      source: {{spacesuit: base}}\n  nics:\n    - {{name: eth0, network: default}}\n{extra}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_is_provisioned_started_and_reported() {
    let mut w = world("run");
    w.apply(BASE);
    let g = w.apply(&vm("web", ""));
    w.run();
    w.wait("web running", |w| {
        w.status(Kind::VirtualMachine, "web")["phase"] == "Running"
    })
    .await;
    let st = w.status(Kind::VirtualMachine, "web");
    assert_eq!(st["observedGeneration"], g);
    assert_eq!(condition(&st, "Ready").unwrap()["status"], "True");
    assert_eq!(condition(&st, "Ready").unwrap()["observedGeneration"], g);
    assert_eq!(condition(&st, "Provisioned").unwrap()["status"], "True");
    assert_eq!(st["node"], "sat-1");
    assert!(
        st["pid"].as_u64().is_some() && st["startedAt"].as_str().is_some(),
        "{st}"
    );
    assert_eq!(st["disks"]["root"], "vm-default-web-root");
    let mac = st["nics"]["eth0"]["mac"].as_str().unwrap();
    assert!(mac.starts_with("52:54:00:"), "{mac}");
    assert!(w.hv.running().contains("default/web"));
    assert!(
        w.storage.volumes().contains("suit-default-base")
            && w.storage.volumes().contains("vm-default-web-root")
    );
    assert_eq!(w.net.taps().len(), 1);
    // Spacesuit and network report too (they reconcile independently).
    w.wait("spacesuit ready", |w| {
        w.status(Kind::Spacesuit, "base")["phase"] == "Ready"
    })
    .await;
    w.wait("network ready", |w| {
        condition(&w.status(Kind::Network, "default"), "Ready")
            .is_some_and(|c| c["status"] == "True")
    })
    .await;
    assert_eq!(w.net.bridges().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_failures_back_off_then_recover() {
    let mut w = world("backoff");
    w.apply(BASE);
    w.hv.faults().fail_next("start", 3);
    let mut started = w.engine.as_ref().unwrap().started();
    w.run();
    // The spacesuit first, so that the VM's attempts are paced by backoff
    // alone (not by a wait for its source volume).
    w.wait("spacesuit ready", |w| {
        w.status(Kind::Spacesuit, "base")["phase"] == "Ready"
    })
    .await;
    w.apply(&vm("flaky", ""));
    // The failure shows in status while it lasts.
    w.wait("StartFailed in status", |w| {
        condition(&w.status(Kind::VirtualMachine, "flaky"), "Ready")
            .is_some_and(|c| c["reason"] == "StartFailed" && c["status"] == "False")
    })
    .await;
    w.wait("recovery", |w| {
        w.status(Kind::VirtualMachine, "flaky")["phase"] == "Running"
    })
    .await;
    assert_eq!(
        w.hv.faults().count("start"),
        4,
        "three failures, then success"
    );
    let st = w.status(Kind::VirtualMachine, "flaky");
    assert_eq!(condition(&st, "Ready").unwrap()["status"], "True");
    // Attempts came farther and farther apart (backoff 40, 80, 160 ms).
    let key = ObjectKey::new(Kind::VirtualMachine, None, "flaky");
    let mut times = Vec::new();
    while let Ok(ev) = started.try_recv() {
        if ev.key == key {
            times.push(ev.at);
        }
    }
    assert!(times.len() >= 4, "{} attempts seen", times.len());
    let gaps: Vec<Duration> = times.windows(2).take(3).map(|p| p[1] - p[0]).collect();
    // Each retry waited at least its backoff: 40, 80, 160 ms (load can
    // only make gaps longer; the exact schedule is pinned under paused time
    // in reconcile::queue's tests).
    for (i, gap) in gaps.iter().enumerate() {
        let floor = Duration::from_millis(40 << i);
        assert!(
            *gap >= floor,
            "retry {} came after {gap:?}, before its backoff {floor:?}: {gaps:?}",
            i + 1
        );
    }
    // The failures were recorded as events.
    let events = w.store.events(Some(&key));
    assert!(
        events.iter().filter(|e| e.reason == "StartFailed").count() >= 3,
        "{events:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_changes_power_state_and_restart_policy() {
    let mut w = world("lifecycle");
    w.apply(BASE);
    w.apply(&vm("app", ""));
    w.run();
    w.wait("running", |w| {
        w.status(Kind::VirtualMachine, "app")["phase"] == "Running"
    })
    .await;
    // A change that needs a restart: flagged, generation observed.
    let g = w.apply(&vm("app", "  cpu: 4\n"));
    w.wait("observedGeneration follows", |w| {
        w.status(Kind::VirtualMachine, "app")["observedGeneration"] == g
    })
    .await;
    let st = w.status(Kind::VirtualMachine, "app");
    assert_eq!(st["pendingRestart"], serde_json::json!(["cpu"]));
    assert_eq!(condition(&st, "Ready").unwrap()["reason"], "RestartPending");
    // Crash with restartPolicy Always (default): restarted with the new spec.
    w.hv.stop_behind_our_back("default/app", StopReason::Crashed);
    w.wait("restart", |w| {
        w.status(Kind::VirtualMachine, "app")["restarts"] == 1
    })
    .await;
    w.wait("running again", |w| {
        w.status(Kind::VirtualMachine, "app")["phase"] == "Running"
    })
    .await;
    assert!(
        w.status(Kind::VirtualMachine, "app")["pendingRestart"].is_null(),
        "the restart applied the change"
    );
    // Stop by spec.
    let g = w.apply(&vm("app", "  cpu: 4\n  powerState: Stopped\n"));
    w.wait("stopped", |w| {
        let st = w.status(Kind::VirtualMachine, "app");
        st["phase"] == "Stopped" && st["observedGeneration"] == g
    })
    .await;
    assert!(!w.hv.running().contains("default/app"));
    // restartPolicy Never: a crash leaves it down with a reason.
    w.apply(&vm("once", "  restartPolicy: Never\n"));
    w.wait("once running", |w| {
        w.status(Kind::VirtualMachine, "once")["phase"] == "Running"
    })
    .await;
    w.hv.stop_behind_our_back("default/once", StopReason::Crashed);
    w.wait("once failed", |w| {
        w.status(Kind::VirtualMachine, "once")["phase"] == "Failed"
    })
    .await;
    let st = w.status(Kind::VirtualMachine, "once");
    assert_eq!(condition(&st, "Ready").unwrap()["reason"], "Crashed");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !w.hv.running().contains("default/once"),
        "Never means never"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletion_cleans_up_and_failures_stay_isolated() {
    let mut w = world("delete");
    w.apply(BASE);
    w.apply(&vm("keep", ""));
    // This one references a spacesuit that does not exist.
    w.apply("apiVersion: deorch.dev/v1alpha1\nkind: VirtualMachine\nmetadata: {name: orphan}\nspec:\n  spacesuit: missing\n");
    w.apply(&vm("gone", ""));
    w.run();
    w.wait("keep and gone running", |w| {
        w.status(Kind::VirtualMachine, "keep")["phase"] == "Running"
            && w.status(Kind::VirtualMachine, "gone")["phase"] == "Running"
    })
    .await;
    let st = w.status(Kind::VirtualMachine, "orphan");
    assert_eq!(st["phase"], "Pending");
    assert_eq!(
        condition(&st, "Ready").unwrap()["reason"],
        "SpacesuitNotFound"
    );
    let gone = ObjectKey::new(Kind::VirtualMachine, None, "gone");
    w.store.delete(&gone, &SourceId("test".into())).unwrap();
    w.wait("cleanup", |w| {
        !w.storage.volumes().contains("vm-default-gone-root")
    })
    .await;
    w.wait("vm removed", |w| !w.hv.running().contains("default/gone"))
        .await;
    // The tap goes after the VM: wait for it rather than race it.
    w.wait("only keep's tap is left", |w| w.net.taps().len() == 1)
        .await;
    assert!(w.hv.running().contains("default/keep"));
    // The orphan starts once its spacesuit appears.
    w.apply("apiVersion: deorch.dev/v1alpha1\nkind: Spacesuit\nmetadata: {name: missing}\nspec: {cpu: 1}\n");
    w.wait("orphan running", |w| {
        w.status(Kind::VirtualMachine, "orphan")["phase"] == "Running"
    })
    .await;
    let _ = w.stop.send(true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_policy_takes_replicas_and_keeps_the_newest() {
    let mut w = world("policy");
    w.apply(BASE);
    // Manifests ask for at least 1m between replicas; the engine itself
    // takes any interval, so the test stores the object directly.
    let parsed = parse_str(
        std::path::Path::new("db.yaml"),
        &vm("db", "  replicaPolicy: {interval: 1m, keep: 2}\n"),
    );
    let mut object = parsed.documents[0].object.to_value();
    object["spec"]["replicaPolicy"]["interval"] = "300ms".into();
    w.store
        .apply(
            &deorch::model::AnyObject::from_value(object).unwrap(),
            &SourceId("test".into()),
        )
        .unwrap();
    w.run();
    // The schedule is a source: it declares the Replica objects through
    // admission, and the engine makes and removes their volumes.
    let schedule = deorch::source::replica_schedule::ReplicaSchedule {
        tick: Duration::from_millis(100),
        node: None,
    };
    let admission = deorch::admission::Admission::new(
        w.store.clone(),
        deorch::admission::AdmissionConfig::default(),
    );
    tokio::spawn(deorch::source::Source::run(
        Box::new(schedule),
        admission,
        w.stop.subscribe(),
    ));
    let autos = |w: &World| -> Vec<String> {
        w.store
            .list(Some(Kind::Replica))
            .into_iter()
            .filter(|r| !r.deleted)
            .map(|r| r.key.name)
            .collect()
    };
    // Several intervals pass: never more than `keep`, and old ones go.
    // (Taken ones include those deleted since: admission replaces the
    // oldest in the transaction that adds the newest.)
    w.wait("three replicas taken", |w| {
        w.store
            .generations()
            .iter()
            .filter(|(k, _, _)| k.kind == Kind::Replica && k.name.starts_with("db-auto-"))
            .count()
            >= 3
    })
    .await;
    // (A new replica is stored a moment before the oldest is deleted.)
    assert!(autos(&w).len() <= 3, "{:?}", autos(&w));
    w.wait("kept replicas ready with volumes", |w| {
        let live = autos(w);
        live.len() == 2
            && live.iter().all(|n| {
                w.status(Kind::Replica, n)["phase"] == "Ready"
                    && w.storage
                        .volumes()
                        .contains(&format!("rep-default-{n}-root"))
            })
    })
    .await;
    // Deleted automatic replicas left no volumes behind.
    w.wait("old replica volumes destroyed", |w| {
        let live = autos(w);
        w.storage
            .volumes()
            .iter()
            .filter(|v| v.starts_with("rep-"))
            .all(|v| live.iter().any(|n| v == &format!("rep-default-{n}-root")))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revert_annotation_reverts_each_disk_once_per_generation() {
    let mut w = world("revert");
    w.apply(BASE);
    w.apply(&vm("app", ""));
    w.run();
    w.wait("app running", |w| {
        w.status(Kind::VirtualMachine, "app")["phase"] == "Running"
    })
    .await;
    let marker = |w: &World, v: &str| {
        let v = format!("vol/{v}");
        w.storage.with_sync(|b| b.read_marker(&v)).unwrap()
    };
    let set = |w: &World, v: &str, m: u64| {
        let v = format!("vol/{v}");
        w.storage.with_sync(|b| b.write_marker(&v, m)).unwrap()
    };
    set(&w, "vm-default-app-root", 7);
    w.apply("apiVersion: deorch.dev/v1alpha1\nkind: Replica\nmetadata: {name: snap}\nspec: {virtualMachine: {name: app}}\n");
    w.wait("replica ready", |w| {
        w.status(Kind::Replica, "snap")["phase"] == "Ready"
    })
    .await;
    set(&w, "vm-default-app-root", 8);
    let g = w.apply(&vm("app", "").replace(
        "metadata: {name: app}",
        "metadata: {name: app, annotations: {deorch.dev/revert-to: snap}}",
    ));
    w.wait("reverted", |w| {
        w.status(Kind::VirtualMachine, "app")["lastRevert"] == format!("snap@{g}").as_str()
    })
    .await;
    assert_eq!(marker(&w, "vm-default-app-root"), 7);
    assert_eq!(marker(&w, "rep-default-snap-root"), 7);
    // The present it replaced is kept (retained, listed, restorable).
    let kept: Vec<String> = w
        .storage
        .volumes()
        .into_iter()
        .filter(|v| v.ends_with(&format!("vm-default-app-root.before-revert-g{g}")))
        .collect();
    assert_eq!(kept.len(), 1, "{:?}", w.storage.volumes());
    assert!(kept[0].starts_with("retained."), "{kept:?}");
    assert_eq!(marker(&w, &kept[0]), 8, "the present's data");
    let st = w.status(Kind::VirtualMachine, "app");
    assert_eq!(condition(&st, "Reverted").unwrap()["status"], "True");
    // Once per generation: later writes are not reverted again.
    set(&w, "vm-default-app-root", 9);
    w.wait("running again", |w| {
        w.status(Kind::VirtualMachine, "app")["phase"] == "Running"
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(marker(&w, "vm-default-app-root"), 9);
    assert_eq!(
        w.hv.faults().count("stop"),
        1,
        "stopped once for the revert"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_deleted_behind_our_back_is_reported_not_recreated() {
    let mut w = world("lost");
    w.apply(BASE);
    w.apply(&vm("gone", ""));
    w.run();
    w.wait("running", |w| {
        w.status(Kind::VirtualMachine, "gone")["phase"] == "Running"
    })
    .await;
    // Someone removes the disk, then the VM crashes.
    w.storage
        .with_sync(|b| {
            deorch::driver::cow::CowBackend::rename(b, "vol/vm-default-gone-root", "trash/x.1")
        })
        .unwrap();
    w.hv.stop_behind_our_back("default/gone", StopReason::Crashed);
    w.wait("VolumeMissing", |w| {
        condition(&w.status(Kind::VirtualMachine, "gone"), "Ready")
            .is_some_and(|c| c["reason"] == "VolumeMissing")
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !w.storage.volumes().contains("vm-default-gone-root"),
        "not recreated"
    );
    assert!(
        !w.hv.running().contains("default/gone"),
        "not started without its disk"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_without_disks_gets_a_clone_of_its_spacesuits_disk() {
    let mut w = world("suitdisk");
    w.apply(BASE);
    // No `disks`: the spacesuit's disk, cloned (copy-on-write).
    w.apply("apiVersion: deorch.dev/v1alpha1\nkind: VirtualMachine\nmetadata: {name: plain}\nspec:\n  spacesuit: base\n");
    // `disks` overrides: only the blank disk, no clone.
    w.apply("apiVersion: deorch.dev/v1alpha1\nkind: VirtualMachine\nmetadata: {name: own}\nspec:\n  spacesuit: base\n  disks:\n    - {name: scratch, size: 1Mi, source: {blank: {}}}\n");
    // A boot-only spacesuit has no disk to give.
    w.apply("apiVersion: deorch.dev/v1alpha1\nkind: Spacesuit\nmetadata: {name: bootonly}\nspec: {cpu: 1}\n---\napiVersion: deorch.dev/v1alpha1\nkind: VirtualMachine\nmetadata: {name: diskless}\nspec:\n  spacesuit: bootonly\n");
    w.run();
    for vm in ["plain", "own", "diskless"] {
        w.wait(&format!("{vm} running"), |w| {
            w.status(Kind::VirtualMachine, vm)["phase"] == "Running"
        })
        .await;
    }
    let st = w.status(Kind::VirtualMachine, "plain");
    assert_eq!(st["disks"]["root"], "vm-default-plain-root", "{st}");
    assert_eq!(
        condition(&st, "Provisioned").unwrap()["message"],
        "1 volume(s), 0 tap(s)"
    );
    assert!(w.storage.volumes().contains("vm-default-plain-root"));
    // The clone has the spacesuit's content and QEMU got it as a disk.
    let marker = |v: &str| {
        w.storage
            .with_sync(|b| b.read_marker(&format!("vol/{v}")))
            .unwrap()
    };
    assert_eq!(marker("vm-default-plain-root"), marker("suit-default-base"));
    let Ok(deorch::driver::VmState::Running { config, .. }) =
        deorch::driver::Hypervisor::state(&*w.hv, "default/plain").await
    else {
        panic!("plain is not running");
    };
    assert_eq!(config.disk_images.len(), 1, "{config:?}");
    assert_eq!(config.disk_images[0].name, "root");
    let own = w.status(Kind::VirtualMachine, "own");
    assert_eq!(
        own["disks"],
        serde_json::json!({"scratch": "vm-default-own-scratch"})
    );
    assert!(!w.storage.volumes().contains("vm-default-own-root"));
    assert!(w.status(Kind::VirtualMachine, "diskless")["disks"].is_null());
    // Deleting the VM keeps the default disk too, for the retention.
    let plain = ObjectKey::new(Kind::VirtualMachine, None, "plain");
    w.store.delete(&plain, &SourceId("test".into())).unwrap();
    w.wait("default disk retained", |w| {
        let v = w.storage.volumes();
        !v.contains("vm-default-plain-root")
            && v.iter()
                .any(|n| n.starts_with("retained.") && n.ends_with(".vm-default-plain-root"))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standalone_node_does_not_run_a_vm_whose_placement_it_fails() {
    let mut w = world("unsched");
    w.apply(BASE);
    w.apply(
        "apiVersion: deorch.dev/v1alpha1\nkind: Satellite\nmetadata: {name: sat-1}\nspec: {}\n",
    );
    let picky = |name: &str| {
        vm(
            name,
            "  placement:\n    performance: high\n    selector:\n      macrocosm:\n        matchLabels: {city: frankfurt}\n",
        )
    };
    w.apply(&picky("picky"));
    w.apply(&vm("easy", ""));
    w.run();
    w.wait("easy running", |w| {
        w.status(Kind::VirtualMachine, "easy")["phase"] == "Running"
    })
    .await;
    w.wait("picky unschedulable", |w| {
        w.status(Kind::VirtualMachine, "picky")["phase"] == "Unschedulable"
    })
    .await;
    let st = w.status(Kind::VirtualMachine, "picky");
    let ready = condition(&st, "Ready").unwrap();
    assert_eq!(ready["reason"], "Unschedulable");
    let why = ready["message"].as_str().unwrap();
    assert!(
        why.contains("performance low, the VM asks for high") && why.contains("tags do not match"),
        "{why}"
    );
    assert!(!w.hv.running().contains("default/picky"));
    // Tag the node as asked: it runs the VM.
    w.apply("apiVersion: deorch.dev/v1alpha1\nkind: Satellite\nmetadata: {name: sat-1}\nspec:\n  performance: high\n  tags:\n    macrocosm: {city: frankfurt}\n");
    w.wait("picky running", |w| {
        w.status(Kind::VirtualMachine, "picky")["phase"] == "Running"
    })
    .await;
}

/// The cluster as a test sets it: every VM elected here, and the nodes
/// said to run each VM.
#[derive(Default)]
struct FakeCluster {
    running_on: std::sync::Mutex<Vec<String>>,
    changes: Option<tokio::sync::broadcast::Sender<ObjectKey>>,
}

impl Placement for FakeCluster {
    fn elected(&self, _vm: &ObjectKey) -> Elected {
        Elected::Here
    }
    fn running_on(&self, _vm: &ObjectKey) -> Vec<String> {
        self.running_on.lock().unwrap().clone()
    }
    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<ObjectKey> {
        self.changes.as_ref().unwrap().subscribe()
    }
}

/// Editing `placement.node` of a running VM with local disks must never
/// leave two copies: the old node keeps it and says a relocation is
/// needed; the new node does not start it while the old one reports it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repinned_vm_with_local_disks_is_not_started_twice() {
    let pinned = |node: &str| vm("db", &format!("  placement: {{node: {node}}}\n"));
    // The old node, sat-1.
    let mut a = world("repin-a");
    a.apply(BASE);
    a.apply(&pinned("sat-1"));
    a.run();
    a.wait("db running on sat-1", |w| {
        w.status(Kind::VirtualMachine, "db")["phase"] == "Running"
    })
    .await;
    a.apply(&pinned("sat-2"));
    a.wait("RelocationRequired on sat-1", |w| {
        condition(&w.status(Kind::VirtualMachine, "db"), "Ready")
            .is_some_and(|c| c["reason"] == "RelocationRequired")
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let st = a.status(Kind::VirtualMachine, "db");
    assert_eq!(st["phase"], "Running");
    assert_eq!(st["node"], "sat-1");
    assert!(a.hv.running().contains("default/db"), "kept running");
    assert_eq!(a.hv.faults().count("stop"), 0);

    // The new node, sat-2, hears from gossip that sat-1 runs it.
    let cluster = Arc::new(FakeCluster {
        running_on: std::sync::Mutex::new(vec!["sat-1".into()]),
        changes: Some(tokio::sync::broadcast::channel(16).0),
    });
    let mut b = world_on("repin-b", "sat-2", Some(cluster.clone()));
    b.apply(BASE);
    b.apply(&pinned("sat-2"));
    b.run();
    b.wait("RelocationRequired on sat-2", |w| {
        condition(&w.status(Kind::VirtualMachine, "db"), "Ready")
            .is_some_and(|c| c["reason"] == "RelocationRequired")
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let st = b.status(Kind::VirtualMachine, "db");
    assert_eq!(st["phase"], "Pending");
    assert_eq!(st["node"], "sat-1");
    assert!(b.hv.running().is_empty(), "never a second copy");
    assert_eq!(b.hv.faults().count("start"), 0);
    // Once the old copy is stopped (and sat-1 says so), sat-2 starts it.
    a.apply(&pinned("sat-2").replace("  placement", "  powerState: Stopped\n  placement"));
    a.wait("stopped on sat-1", |w| {
        !w.hv.running().contains("default/db")
    })
    .await;
    cluster.running_on.lock().unwrap().clear();
    b.wait("db running on sat-2", |w| {
        w.status(Kind::VirtualMachine, "db")["phase"] == "Running"
    })
    .await;
    assert_eq!(b.status(Kind::VirtualMachine, "db")["node"], "sat-2");
}

fn dataset(name: &str, compression: &str) -> String {
    format!("apiVersion: deorch.dev/v1alpha1\nkind: Dataset\nmetadata: {{name: {name}}}\nspec: {{pool: tank, path: {name}, compression: {compression}}}\n")
}

fn calls_on(w: &World, op_target: &str) -> usize {
    let calls = w.storage.faults().calls();
    calls.iter().filter(|c| *c == op_target).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_failure_is_parked_until_the_object_changes() {
    let mut w = world_with("parked", |c| c.resync_every = Duration::from_millis(50));
    w.storage
        .faults()
        .fail_next_permanently("ensure_dataset", 1);
    w.apply(&dataset("broken", "lz4"));
    w.run();
    w.wait("the failure in status", |w| {
        condition(&w.status(Kind::Dataset, "broken"), "Ready")
            .is_some_and(|c| c["reason"] == "EnsureDatasetFailed" && c["status"] == "False")
    })
    .await;
    // A healthy object shows that resyncs run meanwhile.
    w.apply(&dataset("healthy", "lz4"));
    w.wait("resyncs of the healthy one", |w| {
        calls_on(w, "ensure_dataset healthy") >= 4
    })
    .await;
    assert_eq!(
        calls_on(&w, "ensure_dataset broken"),
        1,
        "neither backoff nor resync retried the permanent failure"
    );
    let key = ObjectKey::new(Kind::Dataset, None, "broken");
    let events = w.store.events(Some(&key));
    assert!(
        events
            .iter()
            .any(|e| e.message.contains("not retried until the object changes")),
        "{events:?}"
    );
    // A change brings it back.
    w.apply(&dataset("broken", "zstd"));
    w.wait("ready after the change", |w| {
        condition(&w.status(Kind::Dataset, "broken"), "Ready")
            .is_some_and(|c| c["status"] == "True")
    })
    .await;
    assert!(calls_on(&w, "ensure_dataset broken") >= 2);
    let _ = w.stop.send(true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spacesuit_whose_image_fails_its_checksum_fails_and_one_from_a_missing_vm_waits() {
    let mut w = world("suit-phases");
    let image = w._dir.0.join("disk.img");
    std::fs::create_dir_all(&w._dir.0).unwrap();
    std::fs::write(&image, b"not the expected bytes").unwrap();
    let zeros = "0".repeat(64);
    w.apply(&format!("apiVersion: deorch.dev/v1alpha1\nkind: Spacesuit\nmetadata: {{name: tampered}}\nspec:\n  source: {{image: {{path: {}, sha256: '{zeros}'}}}}\n", image.display()));
    w.apply("apiVersion: deorch.dev/v1alpha1\nkind: Spacesuit\nmetadata: {name: copy}\nspec:\n  source: {virtualMachine: {name: later}}\n");
    w.run();
    w.wait("checksum mismatch: Failed", |w| {
        w.status(Kind::Spacesuit, "tampered")["phase"] == "Failed"
    })
    .await;
    let st = w.status(Kind::Spacesuit, "tampered");
    assert_eq!(
        condition(&st, "Ready").unwrap()["reason"],
        "ChecksumMismatch",
        "{st}"
    );
    assert!(!w.storage.volumes().contains("suit-default-tampered"));
    w.wait("missing VM: Pending", |w| {
        let st = w.status(Kind::Spacesuit, "copy");
        st["phase"] == "Pending"
            && condition(&st, "Ready").is_some_and(|c| c["reason"] == "SourceNotFound")
    })
    .await;
    // The VM appears: the spacesuit is made from its disk.
    w.apply(BASE);
    w.apply(&vm("later", ""));
    w.wait("copy ready", |w| {
        w.status(Kind::Spacesuit, "copy")["phase"] == "Ready"
    })
    .await;
    assert!(w.storage.volumes().contains("suit-default-copy"));
    let _ = w.stop.send(true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_only_kinds_say_what_they_do() {
    let mut w = world("report");
    w.apply("apiVersion: deorch.dev/v1alpha1\nkind: AccessPolicy\nmetadata: {name: team}\nspec:\n  rules:\n    - subjects: [bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4]\n      role: admin\n");
    w.apply("apiVersion: deorch.dev/v1alpha1\nkind: Relocation\nmetadata: {name: move}\nspec:\n  virtualMachine: {name: web}\n");
    w.run();
    w.wait("both reported", |w| {
        condition(&w.status(Kind::AccessPolicy, "team"), "Ready").is_some()
            && condition(&w.status(Kind::Relocation, "move"), "Ready").is_some()
    })
    .await;
    let policy = w.status(Kind::AccessPolicy, "team");
    let c = condition(&policy, "Ready").unwrap();
    assert_eq!(
        (&c["status"], &c["reason"]),
        (&"True".into(), &"InForce".into())
    );
    assert!(
        c["message"].as_str().unwrap().contains("signed sources"),
        "{c}"
    );
    let relocation = w.status(Kind::Relocation, "move");
    let c = condition(&relocation, "Ready").unwrap();
    assert_eq!(
        (&c["status"], &c["reason"]),
        (&"False".into(), &"NoGossip".into())
    );
    let _ = w.stop.send(true);
}

/// A field that validates but has no effect yet is named in the status of
/// the object that sets it (every kind, through one status writer), and
/// the condition goes once the field is removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fields_with_no_effect_yet_are_a_condition_until_removed() {
    let mut w = world("inert");
    w.apply(BASE);
    w.apply(&vm("web", "  array: team-a\n"));
    w.run();
    w.wait("the NoEffectYet condition names array", |w| {
        condition(&w.status(Kind::VirtualMachine, "web"), "NoEffectYet").is_some_and(|c| {
            c["status"] == "True" && c["message"].as_str().unwrap_or("").contains("spec.array")
        })
    })
    .await;
    assert_eq!(
        w.status(Kind::VirtualMachine, "web")["phase"],
        "Running",
        "the field is ignored, the VM still runs"
    );
    // The Network without inert fields has no such condition.
    assert!(condition(&w.status(Kind::Network, "default"), "NoEffectYet").is_none());
    w.apply(&vm("web", ""));
    w.wait("the condition gone with the field", |w| {
        let st = w.status(Kind::VirtualMachine, "web");
        st["observedGeneration"] == 2 && condition(&st, "NoEffectYet").is_none()
    })
    .await;
    let _ = w.stop.send(true);
}

/// A VM's change makes the engine look again at the Networks it was and
/// is on, not at every Network of its namespace (10,000 Networks beside
/// 1,000 VMs were Networks × VMs reconciles).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_change_looks_again_only_at_its_own_networks() {
    let mut w = world("netindex");
    w.apply(BASE);
    let mut nets = String::new();
    for i in 0..40 {
        nets.push_str(&format!(
            "---\napiVersion: deorch.dev/v1alpha1\nkind: Network\nmetadata: {{name: n{i}}}\nspec:\n  ipv4: {{subnet: 10.{i}.0.0/24, gateway: 10.{i}.0.1}}\n"
        ));
    }
    w.apply(&nets);
    w.apply(&vm("web", ""));
    let mut started = w.engine.as_ref().unwrap().started();
    w.run();
    w.wait("web running", |w| {
        w.status(Kind::VirtualMachine, "web")["phase"] == "Running"
    })
    .await;
    // Let the first pass over the networks end (the VM itself is polled
    // all along).
    let networks_started = |rx: &mut tokio::sync::broadcast::Receiver<ReconcileStarted>| {
        let mut n = 0;
        while let Ok(s) = rx.try_recv() {
            n += usize::from(s.key.kind == Kind::Network);
        }
        n
    };
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        if networks_started(&mut started) == 0 {
            break;
        }
    }
    // web moves from `default` to n7: those two networks look again.
    w.apply(&vm("web", "").replace("network: default", "network: n7"));
    tokio::time::sleep(Duration::from_millis(600)).await;
    let mut networks = std::collections::BTreeSet::new();
    while let Ok(s) = started.try_recv() {
        if s.key.kind == Kind::Network {
            networks.insert(s.key.name.clone());
        }
    }
    assert_eq!(
        networks,
        ["default".to_string(), "n7".to_string()].into(),
        "networks reconciled after the VM's change"
    );
}

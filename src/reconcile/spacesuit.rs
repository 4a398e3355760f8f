//! Spacesuit: its base volume exists (boot-only spacesuits have none),
//! imported from an image file (checked against its SHA-256 first) or
//! snapshotted from a VM's first disk, also while that VM runs.
//!
//! [`resolve`] reads the spec and the source VM; [`observe`] asks the
//! storage whether the volume exists and, only when it must be made, hashes
//! the image or finds the source VM's running disks; [`plan`] decides;
//! [`execute`] calls the storage; `status` reports.

use super::kind::run;
use super::status::{made_once, ready};
use super::vm::live_disks;
use super::{decode, names, previous, Ctx, Live, Outcome, Plan, ReconcileError};
use crate::driver::{CloneRequest, DriverError};
use crate::model::phase::ReadyPhase;
use crate::model::spacesuit::SpacesuitStatus;
use crate::model::{Kind, Manifest, SpacesuitSpec, VirtualMachineSpec};
use crate::store::Record;

/// Where the volume comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// Nothing: the spacesuit carries boot settings only.
    BootOnly,
    /// An image file.
    Image {
        /// Its path on the node.
        path: String,
        /// `raw`, `qcow2`, ...; detected when absent.
        format: Option<&'static str>,
        /// Expected SHA-256 (hex).
        sha256: Option<String>,
    },
    /// The first disk of a VM.
    Vm {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// Its spec, when it exists.
        spec: Option<Box<VirtualMachineSpec>>,
        /// The volume of its first disk; `None` when it does not exist or
        /// has no disk.
        volume: Option<String>,
    },
}

/// The spacesuit as this node should have it.
#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    /// The object was deleted: remove its volume.
    pub deleted: bool,
    /// Its volume.
    pub volume: String,
    /// Where the volume comes from.
    pub source: Source,
    /// Its further disks (`spec.disks`), each a volume of its own.
    pub further: Vec<Further>,
    /// Volumes of further disks the spec no longer has (its last status
    /// listed them): removed.
    pub dropped: Vec<String>,
}

/// A further disk of the spacesuit: a volume imported from an image.
#[derive(Debug, Clone, PartialEq)]
pub struct Further {
    /// Its volume.
    pub volume: String,
    /// The image's path on the node.
    pub path: String,
    /// `raw`, `qcow2`, ...; detected when absent.
    pub format: Option<&'static str>,
    /// Expected SHA-256 (hex).
    pub sha256: Option<String>,
}

/// What the node has of a further disk.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FurtherObserved {
    /// The volume exists.
    pub exists: bool,
    /// The image's SHA-256 (hashed only when it is about to be imported
    /// and the spec names one).
    pub image_sha256: Option<String>,
    /// The image file is not on this node.
    pub image_missing: bool,
}

/// What the node has.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observed {
    /// The volume exists.
    pub exists: bool,
    /// The image's SHA-256 (hashed only when it is about to be imported
    /// and the spec names one).
    pub image_sha256: Option<String>,
    /// The image file is not on this node.
    pub image_missing: bool,
    /// The source VM's disks, when it runs here.
    pub live: Live,
    /// The source VM's disk is on this node (checked only when the
    /// volume must be made from it).
    pub source_here: bool,
    /// Other nodes that hold the spacesuit's volume (made from a VM), as
    /// their gossiped statuses say.
    pub held_by: Vec<String>,
    /// Its further disks, in the order of [`Desired::further`].
    pub further: Vec<FurtherObserved>,
    /// Those of [`Desired::dropped`] that exist.
    pub dropped: Vec<String>,
}

/// One step, with everything it needs.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Import an image file into the volume.
    Import {
        /// Volume.
        volume: String,
        /// Image path.
        path: String,
        /// Image format.
        format: Option<&'static str>,
    },
    /// Snapshot a VM's disk into the volume.
    Clone {
        /// The clone.
        request: CloneRequest,
        /// The VM's disks if it runs.
        live: Live,
    },
    /// Remove the volume.
    Destroy {
        /// Volume.
        volume: String,
    },
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Action::Import { volume, path, .. } => write!(f, "import {path} into volume {volume}"),
            Action::Clone { request, live } => {
                write!(
                    f,
                    "snapshot volume {} into volume {}",
                    request.source, request.volume
                )?;
                if live.0.volumes.contains_key(&request.source) {
                    write!(f, " (live, through the running VM)")?;
                }
                Ok(())
            }
            Action::Destroy { volume } => write!(f, "destroy volume {volume}"),
        }
    }
}

/// The Spacesuit reconciler.
pub struct Spacesuits;

super::kind::reconciler_from_module!(Spacesuits);

/// Reconcile one Spacesuit.
pub async fn reconcile(ctx: &Ctx, record: &Record) -> Result<Outcome, ReconcileError> {
    run::<Spacesuits>(ctx, record).await
}

/// The spacesuit as desired.
pub fn resolve(ctx: &Ctx, record: &Record) -> Result<Desired, ReconcileError> {
    let suit: Manifest<SpacesuitSpec> = decode(record)?;
    let ns = &record.key.namespace;
    let source = suit.spec.source.as_ref();
    let source = if let Some(img) = source.and_then(|s| s.image.as_ref()) {
        Source::Image {
            path: img.path.clone(),
            format: img.format.map(|f| f.as_str()),
            sha256: img.sha256.clone(),
        }
    } else if let Some(vm) = source.and_then(|s| s.virtual_machine.as_ref()) {
        let namespace = vm.namespace.clone().unwrap_or_else(|| ns.clone());
        let spec = ctx
            .typed::<VirtualMachineSpec>(Kind::VirtualMachine, &namespace, &vm.name)
            .map(|m| Box::new(m.spec));
        // The VM's first disk as it has it: its own, else its spacesuit's.
        let volume = spec
            .as_ref()
            .and_then(|s| {
                super::vm::vm_disk_names(ctx, &namespace, s)
                    .into_iter()
                    .next()
            })
            .map(|d| names::vm_volume(&namespace, &vm.name, &d));
        Source::Vm {
            namespace,
            name: vm.name.clone(),
            spec,
            volume,
        }
    } else {
        Source::BootOnly
    };
    let further: Vec<Further> = suit
        .spec
        .disks
        .iter()
        .map(|d| Further {
            volume: names::spacesuit_disk_volume(ns, &record.key.name, &d.name),
            path: d.image.path.clone(),
            format: d.image.format.map(|f| f.as_str()),
            sha256: d.image.sha256.clone(),
        })
        .collect();
    let volume = names::spacesuit_volume(ns, &record.key.name);
    let prefix = format!("{volume}.");
    let dropped = previous::<SpacesuitStatus>(record)
        .volumes
        .into_iter()
        .filter(|v| v.starts_with(&prefix) && !further.iter().any(|f| &f.volume == v))
        .collect();
    Ok(Desired {
        deleted: record.deleted,
        volume,
        source,
        further,
        dropped,
    })
}

/// What the node has, looking only at what the plan may need.
pub async fn observe(ctx: &Ctx, d: &Desired) -> Result<Observed, ReconcileError> {
    let mut o = Observed {
        exists: ctx.drivers.storage.exists(&d.volume).await?,
        ..Default::default()
    };
    for v in &d.dropped {
        if ctx.drivers.storage.exists(v).await? {
            o.dropped.push(v.clone());
        }
    }
    for f in &d.further {
        let storage = &ctx.drivers.storage;
        let mut fo = FurtherObserved {
            exists: storage.exists(&f.volume).await?,
            ..Default::default()
        };
        if !d.deleted && !fo.exists {
            if !storage.has_image(&f.path) {
                fo.image_missing = true;
            } else if f.sha256.is_some() {
                fo.image_sha256 = Some(sha256_of(&f.path).await?);
            }
        }
        o.further.push(fo);
    }
    if d.deleted || o.exists {
        return Ok(o);
    }
    match &d.source {
        Source::Image { path, .. } if !ctx.drivers.storage.has_image(path) => {
            o.image_missing = true
        }
        Source::Image {
            path,
            sha256: Some(_),
            ..
        } => o.image_sha256 = Some(sha256_of(path).await?),
        Source::Vm {
            namespace,
            name,
            spec,
            volume: Some(source),
        } => {
            o.held_by = ctx
                .placement
                .as_ref()
                .map(|p| p.volume_holders(&d.volume))
                .unwrap_or_default();
            o.source_here = ctx.drivers.storage.exists(source).await?;
            if o.source_here && o.held_by.is_empty() {
                o.live = Live(live_disks(ctx, namespace, name, spec.as_deref()).await);
            }
        }
        _ => {}
    }
    Ok(o)
}

/// The steps from `o` to `d`: the first disk's, then the further disks'
/// (made once the first is, or is being made, here).
pub fn plan(d: &Desired, o: &Observed) -> Plan<Action> {
    let mut actions = match plan_first(d, o) {
        Plan::Act(a) => a,
        other => return other,
    };
    actions.extend(
        o.dropped
            .iter()
            .map(|v| Action::Destroy { volume: v.clone() }),
    );
    let none = FurtherObserved::default();
    for (i, f) in d.further.iter().enumerate() {
        let fo = o.further.get(i).unwrap_or(&none);
        let volume = f.volume.clone();
        if d.deleted || fo.exists {
            if d.deleted && fo.exists {
                actions.push(Action::Destroy { volume });
            }
            continue;
        }
        match (&f.sha256, &fo.image_sha256) {
            (Some(want), Some(got)) if !got.eq_ignore_ascii_case(want) => {
                return Plan::Fail(ReconcileError::from(DriverError::Condition {
                    op: "import".into(),
                    target: f.path.clone(),
                    reason: "ChecksumMismatch",
                    message: format!("sha256 is {got}, the spacesuit expects {want}"),
                }))
            }
            _ if fo.image_missing => {
                return Plan::Wait {
                    reason: "ImageNotHere",
                    message: format!(
                        "{} is not on this node: a VM placed here fetches the image from a peer that holds it, by its SHA-256",
                        f.path
                    ),
                }
            }
            _ => actions.push(Action::Import {
                volume,
                path: f.path.clone(),
                format: f.format,
            }),
        }
    }
    Plan::Act(actions)
}

/// The steps of the first disk (`spec.source`).
fn plan_first(d: &Desired, o: &Observed) -> Plan<Action> {
    let volume = d.volume.clone();
    if d.deleted || d.source == Source::BootOnly || o.exists {
        let gone = d.deleted && o.exists;
        return Plan::Act(
            gone.then_some(Action::Destroy { volume })
                .into_iter()
                .collect(),
        );
    }
    match &d.source {
        Source::Image {
            path,
            format,
            sha256,
        } => match (sha256, &o.image_sha256) {
            (Some(want), Some(got)) if !got.eq_ignore_ascii_case(want) => {
                Plan::Fail(ReconcileError::from(DriverError::Condition {
                    op: "import".into(),
                    target: path.clone(),
                    reason: "ChecksumMismatch",
                    message: format!("sha256 is {got}, the spacesuit expects {want}"),
                }))
            }
            // Only what a VM here needs crosses the network: such a VM
            // fetches the image by its hash and imports it (vm::execute).
            _ if o.image_missing => Plan::Wait {
                reason: "ImageNotHere",
                message: match sha256 {
                    Some(_) => format!(
                        "{path} is not on this node: a VM placed here fetches the image from a peer that holds it, by its SHA-256"
                    ),
                    None => format!(
                        "{path} is not on this node; with spec.source.image.sha256 set, a VM placed here fetches it from a peer that holds it"
                    ),
                },
            },
            _ => Plan::Act(vec![Action::Import {
                volume,
                path: path.clone(),
                format: *format,
            }]),
        },
        // Made once, where the VM's disk is: a node without it, or where
        // a peer made it already, makes no copy of its own (it would be
        // another instant of the VM); a VM placed here copies the
        // spacesuit's volume from a node that holds it.
        Source::Vm {
            namespace,
            name,
            volume: Some(_),
            ..
        } if !o.held_by.is_empty() || !o.source_here => Plan::Wait {
            reason: "SourceElsewhere",
            message: match o.held_by.as_slice() {
                [] => format!(
                    "VM {namespace}/{name}'s disk is not on this node: the spacesuit is made on the node that holds it, and a VM placed here copies it from there"
                ),
                nodes => format!(
                    "made on node {} from VM {namespace}/{name}: a VM placed here copies it from there",
                    nodes.join(", ")
                ),
            },
        },
        Source::Vm {
            volume: Some(source),
            ..
        } => Plan::Act(vec![Action::Clone {
            request: CloneRequest {
                volume,
                source: source.clone(),
                size: None,
            },
            live: o.live.clone(),
        }]),
        Source::Vm {
            namespace, name, ..
        } => Plan::Wait {
            reason: "SourceNotFound",
            message: format!("VM {namespace}/{name} does not exist or has no disk"),
        },
        Source::BootOnly => Plan::Act(Vec::new()),
    }
}

/// Carry out `actions`.
pub async fn execute(ctx: &Ctx, actions: &[Action]) -> Result<(), ReconcileError> {
    let storage = &ctx.drivers.storage;
    for a in actions {
        match a {
            Action::Import {
                volume,
                path,
                format,
            } => storage.import(volume, path, *format).await?,
            Action::Clone { request, live } => {
                // Also while the VM runs (through its hypervisor on qcow2).
                storage
                    .clone_volumes_live(std::slice::from_ref(request), &live.0)
                    .await?
            }
            Action::Destroy { volume } => storage.destroy(volume).await?,
        }
    }
    Ok(())
}

/// Write the outcome into the status.
fn status(
    ctx: &Ctx,
    record: &Record,
    d: &Desired,
    plan: &Plan<Action>,
    result: Result<(), ReconcileError>,
) -> Result<Outcome, ReconcileError> {
    let mut st: SpacesuitStatus = previous(record);
    st.observed_generation = Some(record.generation);
    let generation = record.generation;
    let retry = ctx.config.blocked_retry;
    let (phase, outcome) = made_once(
        &mut st.conditions,
        generation,
        st.phase,
        plan,
        result,
        retry,
    )?;
    if phase == ReadyPhase::Ready {
        st.volumes = match d.source {
            Source::BootOnly => Vec::new(),
            _ => std::iter::once(d.volume.clone())
                .chain(d.further.iter().map(|f| f.volume.clone()))
                .collect(),
        };
        ready(&mut st.conditions, "Ready", &made(d, plan), generation);
    }
    st.phase = Some(phase);
    ctx.write_status(&record.key, &st)?;
    outcome
}

/// What the volume is, for the `Ready` condition.
fn made(d: &Desired, plan: &Plan<Action>) -> String {
    match (&d.source, plan) {
        (Source::BootOnly, _) => "boot-only spacesuit: no disk".into(),
        (_, Plan::Act(a)) if a.is_empty() => format!("volume {}", d.volume),
        (Source::Image { path, .. }, _) => format!("imported {path}"),
        (
            Source::Vm {
                namespace, name, ..
            },
            _,
        ) => format!("snapshot of {namespace}/{name}"),
    }
}

/// An image file's SHA-256 (hex).
async fn sha256_of(path: &str) -> Result<String, ReconcileError> {
    let p = path.to_string();
    tokio::task::spawn_blocking(move || -> std::io::Result<String> {
        use sha2::{Digest, Sha256};
        let mut f = std::fs::File::open(&p)?;
        let mut h = Sha256::new();
        std::io::copy(&mut f, &mut h)?;
        Ok(hex::encode(h.finalize()))
    })
    .await
    .map_err(|e| DriverError::transient("import", path, e.to_string()))?
    .map_err(|e| ReconcileError::from(DriverError::permanent("import", path, e.to_string())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(sha256: Option<&str>) -> Desired {
        Desired {
            deleted: false,
            volume: "suit-default-base".into(),
            source: Source::Image {
                path: "/images/base.qcow2".into(),
                format: Some("qcow2"),
                sha256: sha256.map(str::to_string),
            },
            further: Vec::new(),
            dropped: Vec::new(),
        }
    }

    fn from_vm(volume: Option<&str>) -> Desired {
        Desired {
            deleted: false,
            volume: "suit-default-gold".into(),
            source: Source::Vm {
                namespace: "default".into(),
                name: "web".into(),
                spec: None,
                volume: volume.map(str::to_string),
            },
            further: Vec::new(),
            dropped: Vec::new(),
        }
    }

    #[test]
    fn plan_table() {
        let absent = Observed::default();
        let present = Observed {
            exists: true,
            ..Default::default()
        };
        let hashed = |h: &str| Observed {
            image_sha256: Some(h.into()),
            ..Default::default()
        };
        let import = Plan::Act(vec![Action::Import {
            volume: "suit-default-base".into(),
            path: "/images/base.qcow2".into(),
            format: Some("qcow2"),
        }]);
        let boot_only = Desired {
            source: Source::BootOnly,
            ..image(None)
        };
        let deleted = Desired {
            deleted: true,
            ..image(None)
        };
        let cases: Vec<(&str, Desired, Observed, Plan<Action>)> = vec![
            (
                "boot only: nothing",
                boot_only,
                absent.clone(),
                Plan::Act(vec![]),
            ),
            (
                "image, absent: import",
                image(None),
                absent.clone(),
                import.clone(),
            ),
            (
                "image, present: nothing",
                image(None),
                present.clone(),
                Plan::Act(vec![]),
            ),
            (
                "image not here: wait for a VM here to fetch it",
                image(Some("abc")),
                Observed {
                    image_missing: true,
                    ..Default::default()
                },
                Plan::Wait {
                    reason: "ImageNotHere",
                    message: "/images/base.qcow2 is not on this node: a VM placed here fetches the image from a peer that holds it, by its SHA-256".into(),
                },
            ),
            (
                "checksum matches (any case)",
                image(Some("ABC")),
                hashed("abc"),
                import,
            ),
            (
                "VM disk on another node: wait",
                from_vm(Some("vm-default-web-root")),
                absent.clone(),
                Plan::Wait {
                    reason: "SourceElsewhere",
                    message: "VM default/web's disk is not on this node: the spacesuit is made on the node that holds it, and a VM placed here copies it from there".into(),
                },
            ),
            (
                "VM disk here, made on a peer already: wait",
                from_vm(Some("vm-default-web-root")),
                Observed {
                    source_here: true,
                    held_by: vec!["sat-a".into()],
                    ..Default::default()
                },
                Plan::Wait {
                    reason: "SourceElsewhere",
                    message: "made on node sat-a from VM default/web: a VM placed here copies it from there".into(),
                },
            ),
            (
                "VM disk here: clone",
                from_vm(Some("vm-default-web-root")),
                Observed {
                    source_here: true,
                    ..Default::default()
                },
                Plan::Act(vec![Action::Clone {
                    request: CloneRequest {
                        volume: "suit-default-gold".into(),
                        source: "vm-default-web-root".into(),
                        size: None,
                    },
                    live: Live::default(),
                }]),
            ),
            (
                "VM missing: wait",
                from_vm(None),
                absent.clone(),
                Plan::Wait {
                    reason: "SourceNotFound",
                    message: "VM default/web does not exist or has no disk".into(),
                },
            ),
            (
                "VM missing, volume made: nothing",
                from_vm(None),
                present.clone(),
                Plan::Act(vec![]),
            ),
            (
                "deleted: destroy",
                deleted.clone(),
                present,
                Plan::Act(vec![Action::Destroy {
                    volume: "suit-default-base".into(),
                }]),
            ),
            ("deleted, already gone", deleted, absent, Plan::Act(vec![])),
        ];
        for (name, d, o, want) in cases {
            assert_eq!(plan(&d, &o), want, "{name}");
        }
    }

    #[test]
    fn a_checksum_mismatch_fails_permanently_with_its_reason() {
        let Plan::Fail(e) = plan(
            &image(Some("abc")),
            &Observed {
                image_sha256: Some("def".into()),
                ..Default::default()
            },
        ) else {
            panic!("a mismatch must fail");
        };
        assert_eq!(e.reason, "ChecksumMismatch");
        assert!(!e.is_transient());
        assert!(
            e.message
                .contains("sha256 is def, the spacesuit expects abc"),
            "{e}"
        );
    }

    #[test]
    fn further_disks_are_imported_checked_and_destroyed_beside_the_first() {
        let two = Desired {
            further: vec![Further {
                volume: "suit-default-base.data".into(),
                path: "/images/data.qcow2".into(),
                format: Some("qcow2"),
                sha256: Some("aa".into()),
            }],
            ..image(None)
        };
        let seen = |exists: bool, further: FurtherObserved| Observed {
            exists,
            further: vec![further],
            ..Default::default()
        };
        let import = |volume: &str, path: &str| Action::Import {
            volume: volume.into(),
            path: path.into(),
            format: Some("qcow2"),
        };
        let hashed = FurtherObserved {
            image_sha256: Some("AA".into()),
            ..Default::default()
        };
        assert_eq!(
            plan(&two, &seen(false, hashed.clone())),
            Plan::Act(vec![
                import("suit-default-base", "/images/base.qcow2"),
                import("suit-default-base.data", "/images/data.qcow2"),
            ]),
            "both absent: both imported"
        );
        assert_eq!(
            plan(&two, &seen(true, hashed)),
            Plan::Act(vec![import("suit-default-base.data", "/images/data.qcow2")]),
            "the first made: the further one only"
        );
        let made = FurtherObserved {
            exists: true,
            ..Default::default()
        };
        assert_eq!(plan(&two, &seen(true, made.clone())), Plan::Act(vec![]));
        let Plan::Fail(e) = plan(
            &two,
            &seen(
                true,
                FurtherObserved {
                    image_sha256: Some("bb".into()),
                    ..Default::default()
                },
            ),
        ) else {
            panic!("a further disk's mismatch must fail");
        };
        assert_eq!(e.reason, "ChecksumMismatch");
        assert!(
            e.message.contains("sha256 is bb, the spacesuit expects aa"),
            "{e}"
        );
        let Plan::Wait { reason, message } = plan(
            &two,
            &seen(
                true,
                FurtherObserved {
                    image_missing: true,
                    ..Default::default()
                },
            ),
        ) else {
            panic!("a further disk's image elsewhere: wait");
        };
        assert_eq!(reason, "ImageNotHere");
        assert!(message.contains("/images/data.qcow2"), "{message}");
        // A disk taken out of the spec: its volume goes.
        let fewer = Desired {
            dropped: vec!["suit-default-base.old".into()],
            ..two.clone()
        };
        let still = Observed {
            exists: true,
            further: vec![made.clone()],
            dropped: vec!["suit-default-base.old".into()],
            ..Default::default()
        };
        assert_eq!(
            plan(&fewer, &still),
            Plan::Act(vec![Action::Destroy {
                volume: "suit-default-base.old".into()
            }])
        );
        let gone = Desired {
            deleted: true,
            ..two
        };
        assert_eq!(
            plan(&gone, &seen(true, made)),
            Plan::Act(vec![
                Action::Destroy {
                    volume: "suit-default-base".into()
                },
                Action::Destroy {
                    volume: "suit-default-base.data".into()
                },
            ])
        );
    }
}

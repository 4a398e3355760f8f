//! The Unix socket server.

use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::{NodeInfo, Request, Response, MAX_REQUEST};
use crate::admission::{Admission, Batch, Deletion, Trust, Verdict};
use crate::model::{Kind, ObjectKey};
use crate::reconcile::kind::Preview;
use crate::reconcile::Ctx;
use crate::store::{Applied, SourceId, Store};

/// Source id of what the local API writes.
pub const API_SOURCE: &str = "api";

/// Static facts the server reports in `Info`.
#[derive(Debug, Clone)]
pub struct ServerFacts {
    /// Node name.
    pub name: String,
    /// Hypervisor driver name.
    pub hypervisor: String,
    /// Storage driver name.
    pub storage: String,
    /// Manifest directory.
    pub manifests: String,
    /// The HTTP API's URL (`https://ADDR#sha256=PIN`), when it listens.
    pub http_url: Option<String>,
    /// The live members (gossip only), for `deorch do nodes`.
    pub radar: Option<tokio::sync::watch::Receiver<Vec<crate::node::cluster::RadarNode>>>,
}

/// Bind the socket: its directory is created `0700`, a stale socket file
/// is replaced, the socket itself is `0600`.
pub fn bind(path: &Path) -> io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() && !dir.exists() {
            std::fs::create_dir_all(dir)?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        }
    }
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        // Only a stale socket is ours to replace: a file, a directory or a
        // link at the path is somebody's, and stays.
        if !meta.file_type().is_socket() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!(
                    "{} exists and is not a socket: refusing to replace it (choose another --socket)",
                    path.display()
                ),
            ));
        }
        // A live node answers; refuse to steal its socket.
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("{} is in use by a running node", path.display()),
            ));
        }
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// A connection that sends no complete request for this long is closed:
/// idle clients must not hold descriptors forever. Long enough for any
/// CLI (which sends its request at once) and for a script between calls.
pub const IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// [`serve`] on a thread of its own, with a one-thread runtime: the local
/// API answers however busy the node's workers are (a 40,000-object file
/// kept both of them reconciling, and the API waited behind them for
/// seconds). The returned task ends when the server does.
pub fn serve_on_own_thread(
    listener: UnixListener,
    path: PathBuf,
    admission: Arc<Admission>,
    facts: ServerFacts,
    planner: Arc<Ctx>,
    shutdown: watch::Receiver<bool>,
) -> io::Result<tokio::task::JoinHandle<()>> {
    let listener = listener.into_std()?;
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::Builder::new()
        .name("local-api".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(error = %e, "local API: starting its runtime");
                    return;
                }
            };
            rt.block_on(async move {
                match UnixListener::from_std(listener) {
                    Ok(l) => serve(l, path, admission, facts, planner, shutdown).await,
                    Err(e) => tracing::error!(error = %e, "local API: taking its socket"),
                }
            });
            let _ = done_tx.send(());
        })?;
    Ok(tokio::spawn(async move {
        let _ = done_rx.await;
    }))
}

/// Serve until `shutdown` turns true; removes the socket file on exit.
pub async fn serve(
    listener: UnixListener,
    path: PathBuf,
    admission: Arc<Admission>,
    facts: ServerFacts,
    planner: Arc<Ctx>,
    mut shutdown: watch::Receiver<bool>,
) {
    let started = Instant::now();
    let own_uid = std::fs::metadata("/proc/self").map(|m| m.uid()).ok();
    let mut errors = crate::accept::AcceptErrors::default();
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            conn = listener.accept() => {
                let (stream, _) = match conn {
                    Ok(c) => {
                        errors.ok();
                        c
                    }
                    Err(e) => {
                        errors.failed("local API", &e).await;
                        continue;
                    }
                };
                // Only root or the node's own user.
                let uid = stream.peer_cred().map(|c| c.uid()).ok();
                if !(uid == Some(0) || (uid.is_some() && uid == own_uid)) {
                    warn!(?uid, "refused local API connection from another user");
                    continue;
                }
                let admission = admission.clone();
                let facts = facts.clone();
                let planner = planner.clone();
                tokio::spawn(async move {
                    if let Err(e) = handle_conn(stream, admission, facts, planner, started).await {
                        debug!(error = %e, "local API connection ended");
                    }
                });
            }
        }
    }
    // Ours only while it is still a socket.
    if std::fs::symlink_metadata(&path)
        .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()))
    {
        let _ = std::fs::remove_file(&path);
    }
    info!(socket = %path.display(), "local API stopped");
}

async fn handle_conn(
    stream: UnixStream,
    admission: Arc<Admission>,
    facts: ServerFacts,
    planner: Arc<Ctx>,
    started: Instant,
) -> io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let mut line = Vec::new();
    loop {
        line.clear();
        let mut limited = (&mut reader).take(MAX_REQUEST as u64 + 1);
        let read = limited.read_until(b'\n', &mut line);
        let n = match tokio::time::timeout(IDLE_TIMEOUT, read).await {
            Ok(n) => n?,
            Err(_) => {
                debug!("local API connection idle for {IDLE_TIMEOUT:?}: closed");
                return Ok(());
            }
        };
        if n == 0 {
            return Ok(());
        }
        let response = if line.len() > MAX_REQUEST {
            Response::Error {
                code: "BadRequest".into(),
                message: format!("request larger than {MAX_REQUEST} bytes"),
            }
        } else {
            match serde_json::from_slice::<Request>(&line) {
                Ok(Request::Apply {
                    filename,
                    yaml,
                    dry_run: true,
                }) => dry_run(admission.clone(), &planner, filename, yaml).await,
                Ok(
                    req @ (Request::Volumes
                    | Request::RestoreVolume { .. }
                    | Request::PurgeVolume { .. }),
                ) => volumes(&planner, req).await,
                Ok(Request::Console { namespace, name }) => {
                    let ns = namespace.unwrap_or_else(|| crate::model::DEFAULT_NAMESPACE.into());
                    match crate::http::issue_console_ticket(
                        planner.drivers.hypervisor.as_ref(),
                        &planner.store,
                        &ns,
                        &name,
                    )
                    .await
                    {
                        Ok(ticket) => {
                            info!(vm = %ticket["vm"], expires = %ticket["expires"], "console ticket issued (local API)");
                            Response::ConsoleTicket { ticket }
                        }
                        Err((code, message)) => Response::Error {
                            code: code.into(),
                            message,
                        },
                    }
                }
                Ok(Request::FastrSync { namespace, name }) => {
                    let key = crate::model::ObjectKey::new(
                        crate::model::Kind::VirtualMachine,
                        namespace.as_deref(),
                        &name,
                    );
                    match planner.placement.as_ref().map(|p| p.fastr_sync(&key)) {
                        Some(Ok(())) => Response::VolumeDone {
                            message: format!("{key}: a FASTR round starts now"),
                        },
                        Some(Err(e)) => Response::Error {
                            code: "Conflict".into(),
                            message: e,
                        },
                        None => Response::Error {
                            code: "BadRequest".into(),
                            message:
                                "this node does not gossip: FASTR has no other node to copy to"
                                    .into(),
                        },
                    }
                }
                Ok(Request::FastrPoints { namespace, name }) => {
                    fastr_points(&planner, namespace.as_deref(), &name).await
                }
                // Streams: they hold the connection until they end.
                Ok(Request::Watch {
                    kind,
                    namespace,
                    name,
                }) => {
                    let store = admission.store();
                    let (r, w) = (&mut reader, &mut write);
                    return super::stream::watch(store, kind, namespace, name, r, w).await;
                }
                Ok(Request::Logs {
                    namespace,
                    name,
                    tail,
                    follow,
                }) => {
                    let (r, w) = (&mut reader, &mut write);
                    return super::stream::logs(&planner, namespace, name, tail, follow, r, w)
                        .await;
                }
                Ok(Request::VmReset { namespace, name }) => {
                    super::stream::reset(&planner, namespace, name).await
                }
                Ok(Request::FastrRecover {
                    namespace,
                    name,
                    at,
                }) => {
                    let key = crate::model::ObjectKey::new(
                        crate::model::Kind::VirtualMachine,
                        namespace.as_deref(),
                        &name,
                    );
                    let asked = planner
                        .placement
                        .as_ref()
                        .map(|p| p.fastr_recover(&key, at));
                    match asked {
                        None => Response::Error {
                            code: "BadRequest".into(),
                            message:
                                "this node does not gossip: FASTR has no copies to recover from"
                                    .into(),
                        },
                        Some(Err(e)) => Response::Error {
                            code: "BadRequest".into(),
                            message: e,
                        },
                        Some(Ok(rx)) => match rx.await {
                            Ok(Ok(message)) => Response::VolumeDone { message },
                            Ok(Err(e)) => Response::Error {
                                code: "Conflict".into(),
                                message: e,
                            },
                            Err(_) => Response::Error {
                                code: "Internal".into(),
                                message: "the relocation agent did not answer (is it running?)"
                                    .into(),
                            },
                        },
                    }
                }
                Ok(Request::Recover { namespace, name }) => {
                    let key = crate::model::ObjectKey::new(
                        crate::model::Kind::VirtualMachine,
                        namespace.as_deref(),
                        &name,
                    );
                    match planner.placement.clone() {
                        None => Response::Error {
                            code: "BadRequest".into(),
                            message:
                                "this node does not gossip: there is no cluster to recover a VM in"
                                    .into(),
                        },
                        Some(p) => {
                            let k = key.clone();
                            match tokio::task::spawn_blocking(move || p.recover(&k, false)).await {
                                Ok(Ok(epoch)) => Response::VolumeDone {
                                    message: format!("{key} claimed by this node at election epoch {epoch}: it starts here from what this node has (a retained copy of its volumes, else fresh disks); the lost node's copy, if it returns, is stopped with its disks kept"),
                                },
                                Ok(Err(e)) => Response::Error {
                                    code: "Conflict".into(),
                                    message: e,
                                },
                                Err(e) => Response::Error {
                                    code: "Internal".into(),
                                    message: e.to_string(),
                                },
                            }
                        }
                    }
                }
                Ok(req) => {
                    let admission = admission.clone();
                    let facts = facts.clone();
                    // Store writes fsync: keep them off the async threads.
                    tokio::task::spawn_blocking(move || handle(req, &admission, &facts, started))
                        .await
                        .unwrap_or_else(|e| Response::Error {
                            code: "Internal".into(),
                            message: format!("handler failed: {e}"),
                        })
                }
                Err(e) => Response::Error {
                    code: "BadRequest".into(),
                    message: format!("malformed request: {e}"),
                },
            }
        };
        let mut out = serde_json::to_vec(&response).expect("responses serialize");
        out.push(b'\n');
        write.write_all(&out).await?;
        if line.len() > MAX_REQUEST {
            return Ok(());
        }
    }
}

fn not_found(what: impl std::fmt::Display) -> Response {
    Response::Error {
        code: "NotFound".into(),
        message: format!("{what} not found"),
    }
}

fn parse_kind(kind: &str) -> Result<Kind, Response> {
    Kind::from_cli(kind).ok_or_else(|| {
        let all: Vec<&str> = Kind::ALL.iter().map(|k| k.as_str()).collect();
        Response::Error {
            code: "BadRequest".into(),
            message: format!("unknown kind {kind:?}, expected one of: {}", all.join(", ")),
        }
    })
}

/// Answer one request (blocking: may write the store).
pub fn handle(
    req: Request,
    admission: &Admission,
    facts: &ServerFacts,
    started: Instant,
) -> Response {
    let store = admission.store();
    let result = match req {
        Request::Apply {
            filename,
            yaml,
            dry_run,
        } => apply(admission, &filename, &yaml, dry_run),
        Request::Command { q, run } => {
            let members = facts
                .radar
                .as_ref()
                .map(|r| r.borrow().clone())
                .unwrap_or_default();
            let records = crate::command::plan::with_members(store.list_shared(), &members);
            match crate::command::answer(&q, &records) {
                Err(outcome) => Ok(Response::Command { outcome }),
                Ok((mut outcome, manifest)) => {
                    if let (true, Some(yaml)) = (run, manifest) {
                        let applied = match apply(admission, "<deorch do>", &yaml, false) {
                            Ok(r) | Err(r) => r,
                        };
                        outcome["applied"] = serde_json::to_value(&applied).unwrap_or_default();
                    }
                    Ok(Response::Command { outcome })
                }
            }
        }
        Request::Delete {
            kind,
            namespace,
            name,
            purge,
        } => parse_kind(&kind).and_then(|kind| {
            let key = ObjectKey::new(kind, namespace.as_deref(), &name);
            let mut batch = Batch::new(SourceId(API_SOURCE.into()), Trust::Local);
            batch.deletions.push(Deletion {
                key: key.clone(),
                at: "local API".into(),
                tombstone: None,
                purge,
            });
            let outcome = admission.admit(batch).map_err(internal)?;
            match outcome.verdicts.first().map(|a| &a.verdict) {
                Some(Verdict::Deleted { generation }) => {
                    info!(object = %key, generation, "deleted via local API");
                    Ok(Response::Deleted {
                        key,
                        generation: *generation,
                    })
                }
                Some(Verdict::Absent) => Err(not_found(&key)),
                _ => Ok(Response::Refused {
                    verdicts: outcome.verdicts,
                }),
            }
        }),
        Request::Events {
            kind,
            namespace,
            name,
        } => match (kind, name) {
            (Some(kind), Some(name)) => parse_kind(&kind).map(|kind| {
                let key = ObjectKey::new(kind, namespace.as_deref(), &name);
                Response::Events {
                    events: store.events(Some(&key)),
                }
            }),
            (None, None) => Ok(Response::Events {
                events: store.events(None),
            }),
            _ => Err(Response::Error {
                code: "BadRequest".into(),
                message: "events: give both kind and name, or neither".into(),
            }),
        },
        Request::Get {
            kind,
            namespace,
            name,
        } => {
            let kind = match kind.as_deref().map(parse_kind).transpose() {
                Ok(k) => k,
                Err(r) => return r,
            };
            let records: Vec<_> = store
                .list(kind)
                .into_iter()
                .filter(|r| {
                    namespace
                        .as_ref()
                        .is_none_or(|ns| r.key.namespace == *ns || r.key.namespace.is_empty())
                })
                .filter(|r| name.as_ref().is_none_or(|n| r.key.name == *n))
                .collect();
            if let (Some(name), true) = (&name, records.is_empty()) {
                Err(not_found(name))
            } else {
                Ok(Response::Objects { records })
            }
        }
        Request::Describe {
            kind,
            namespace,
            name,
        } => parse_kind(&kind).and_then(|kind| {
            let key = ObjectKey::new(kind, namespace.as_deref(), &name);
            match store.get(&key) {
                Some(record) if !record.deleted => Ok(Response::Described {
                    events: store.events(Some(&key)),
                    record: Box::new(record),
                }),
                _ => Err(not_found(&key)),
            }
        }),
        Request::Volumes
        | Request::RestoreVolume { .. }
        | Request::PurgeVolume { .. }
        | Request::Recover { .. }
        | Request::FastrSync { .. }
        | Request::FastrPoints { .. }
        | Request::FastrRecover { .. }
        | Request::Watch { .. }
        | Request::Logs { .. }
        | Request::VmReset { .. }
        | Request::Console { .. } => Err(Response::Error {
            code: "BadRequest".into(),
            message: "volume requests need the node's storage (the socket server answers them)"
                .into(),
        }),
        Request::Info => Ok(Response::Info(Box::new(NodeInfo {
            name: facts.name.clone(),
            version: env!("CARGO_PKG_VERSION").into(),
            objects: store.len(),
            hypervisor: facts.hypervisor.clone(),
            storage: facts.storage.clone(),
            manifests: facts.manifests.clone(),
            uptime_secs: started.elapsed().as_secs(),
            warnings: recent_warnings(store),
            http_url: facts.http_url.clone(),
        }))),
    };
    result.unwrap_or_else(|r| r)
}

/// The 20 newest warnings, oldest first.
fn recent_warnings(store: &Store) -> Vec<crate::store::Event> {
    let mut w: Vec<_> = store
        .events(None)
        .into_iter()
        .filter(|e| e.level == "Warning")
        .collect();
    let skip = w.len().saturating_sub(20);
    w.drain(..skip);
    w
}

fn internal(e: impl std::fmt::Display) -> Response {
    Response::Error {
        code: "Internal".into(),
        message: e.to_string(),
    }
}

/// `apply --dry-run`: admission's verdicts, and for each document it would
/// apply, what this node's reconciler would then do, planned against the
/// store as the batch would leave it. Nothing is written, nothing executed.
async fn dry_run(
    admission: Arc<Admission>,
    planner: &Ctx,
    filename: String,
    yaml: String,
) -> Response {
    let decided = tokio::task::spawn_blocking(move || {
        let mut batch = Batch::new(SourceId(API_SOURCE.into()), Trust::Local);
        batch.parse(&filename, &yaml);
        if !batch.diagnostics.is_empty() {
            return Err(Response::Invalid {
                diagnostics: batch.diagnostics,
            });
        }
        if batch.docs.is_empty() {
            return Err(Response::Error {
                code: "BadRequest".into(),
                message: format!("{filename}: no documents"),
            });
        }
        admission.preview(batch).map_err(internal)
    })
    .await;
    let (outcome, staged) = match decided {
        Ok(Ok(v)) => v,
        Ok(Err(response)) => return response,
        Err(e) => return internal(format!("handler failed: {e}")),
    };
    let mut plans = Vec::new();
    if outcome.refusals().next().is_none() {
        let ctx = planner.with_pending(staged);
        for a in &outcome.verdicts {
            plans.push(match ctx.get(&a.key) {
                Some(record) => crate::reconcile::preview(&ctx, &record).await,
                None => Preview::default(),
            });
        }
    }
    Response::Verdicts {
        verdicts: outcome.verdicts,
        plans,
    }
}

/// `deorch fastr points`: the points every copy of the VM's disks here
/// holds.
async fn fastr_points(ctx: &Ctx, namespace: Option<&str>, name: &str) -> Response {
    use crate::model::{names, Kind, VirtualMachineSpec};
    let ns = namespace.unwrap_or(crate::model::DEFAULT_NAMESPACE);
    let Some(vm) = ctx.typed::<VirtualMachineSpec>(Kind::VirtualMachine, ns, name) else {
        return Response::Error {
            code: "NotFound".into(),
            message: format!("VM {ns}/{name} does not exist"),
        };
    };
    let copies: Vec<String> = vm
        .spec
        .disks
        .iter()
        .map(|d| names::fastr_copy(&names::vm_volume(ns, name, &d.name)))
        .collect();
    let points =
        crate::relocate::agent::fastr::complete_points(ctx.drivers.storage.as_ref(), &copies).await;
    if points.is_empty() {
        return Response::Error {
            code: "NotFound".into(),
            message: format!("this node holds no complete FASTR copy of {ns}/{name}"),
        };
    }
    Response::FastrPoints { points }
}

/// The volumes of diverged copies, by volume name → their note. Two
/// kinds: the disks of a VM this node's engine reports as running on
/// another node (`Elsewhere`) that are still under their own names (the
/// copy here was stopped with its disks kept, and waits for that node to
/// report running it), and the volumes of a diverged replica (the disks
/// of such a copy kept under `names::diverged_replica`).
fn diverged_copies(
    ctx: &Ctx,
    names: &[String],
) -> std::collections::BTreeMap<String, super::Diverged> {
    use crate::model::names;
    use crate::model::{Kind, Manifest, VirtualMachineSpec};
    let mut out = std::collections::BTreeMap::new();
    for r in ctx.store.list(Some(Kind::VirtualMachine)) {
        let Ok(vm) = serde_json::from_value::<Manifest<VirtualMachineSpec>>(r.object) else {
            continue;
        };
        let (ns, name) = (&r.key.namespace, &r.key.name);
        let node = r
            .status
            .as_ref()
            .filter(|s| s["phase"] == "Elsewhere")
            .and_then(|s| s["node"].as_str())
            .filter(|n| !n.is_empty() && *n != ctx.config.node_name)
            .map(str::to_string);
        for disk in &vm.spec.disks {
            let diverged = |replica: Option<String>| super::Diverged {
                vm: format!("{ns}/{name}"),
                node: node.clone(),
                replica,
            };
            if node.is_some() {
                out.insert(names::vm_volume(ns, name, &disk.name), diverged(None));
            }
            for v in names {
                if let Some(at) = names::parse_diverged(ns, name, &disk.name, v) {
                    let replica = names::diverged_replica(name, at);
                    out.insert(v.clone(), diverged(Some(replica)));
                }
            }
        }
    }
    out
}

/// `deorch volume list|restore|purge`: the node's volumes, through its
/// storage driver. Only retained volumes can be restored, and retained
/// volumes and diverged replicas' purged; the others belong to their
/// objects' reconcilers.
async fn volumes(planner: &Ctx, req: Request) -> Response {
    use crate::model::names::parse_retained;
    let storage = &planner.drivers.storage;
    let retained = |name: &str| -> Result<String, Response> {
        parse_retained(name)
            .map(|(_, v)| v.to_string())
            .ok_or_else(|| Response::Error {
                code: "BadRequest".into(),
                message: format!(
                    "{name} is not a retained volume (retained.<until>.<volume>; see deorch volume list)"
                ),
            })
    };
    let result = match req {
        Request::Volumes => storage.list().await.map(|names| {
            let diverged = diverged_copies(planner, &names);
            Response::Volumes {
                volumes: names
                    .into_iter()
                    .map(|name| super::VolumeEntry {
                        retained: parse_retained(&name).map(|(until, v)| (v.to_string(), until)),
                        diverged: diverged.get(&name).cloned(),
                        name,
                    })
                    .collect(),
            }
        }),
        Request::RestoreVolume { name } => {
            let volume = match retained(&name) {
                Ok(v) => v,
                Err(r) => return r,
            };
            match storage.exists(&volume).await {
                Ok(true) => {
                    return Response::Error {
                        code: "Conflict".into(),
                        message: format!("volume {volume} exists; purge or rename it first"),
                    }
                }
                Err(e) => return internal(e),
                Ok(false) => {}
            }
            storage.rename(&name, &volume).await.map(|()| {
                info!(retained = %name, volume = %volume, "retained volume restored via local API");
                Response::VolumeDone {
                    message: format!("{name} restored as {volume}"),
                }
            })
        }
        Request::PurgeVolume { name } => {
            // A retained volume, or a volume of a diverged replica.
            let replica = diverged_copies(planner, std::slice::from_ref(&name))
                .get(&name)
                .is_some_and(|d| d.replica.is_some());
            if let (Err(r), false) = (retained(&name), replica) {
                return r;
            }
            storage.destroy(&name).await.map(|()| {
                info!(volume = %name, "retained or diverged volume purged via local API");
                Response::VolumeDone {
                    message: format!("{name} destroyed"),
                }
            })
        }
        _ => unreachable!("only volume requests come here"),
    };
    planner.retained.invalidate();
    result.unwrap_or_else(internal)
}

/// Parse and admit every document as one batch: all are applied, or none.
fn apply(
    admission: &Admission,
    filename: &str,
    yaml: &str,
    dry_run: bool,
) -> Result<Response, Response> {
    let mut batch = Batch::new(SourceId(API_SOURCE.into()), Trust::Local);
    batch.parse(filename, yaml);
    if !batch.diagnostics.is_empty() {
        return Ok(Response::Invalid {
            diagnostics: batch.diagnostics,
        });
    }
    if batch.docs.is_empty() {
        return Err(Response::Error {
            code: "BadRequest".into(),
            message: format!("{filename}: no documents"),
        });
    }
    if dry_run {
        let outcome = admission.dry_run(batch).map_err(internal)?;
        return Ok(Response::Verdicts {
            verdicts: outcome.verdicts,
            plans: Vec::new(),
        });
    }
    let outcome = admission.admit(batch).map_err(internal)?;
    if !outcome.committed {
        return Ok(Response::Refused {
            verdicts: outcome.verdicts,
        });
    }
    let objects = outcome
        .verdicts
        .into_iter()
        .map(|a| {
            let (generation, changed) = match a.verdict {
                Verdict::Applied { generation } => (generation, true),
                Verdict::Unchanged { generation } => (generation, false),
                _ => (0, false),
            };
            Applied {
                key: a.key,
                generation,
                changed,
            }
        })
        .collect();
    Ok(Response::Applied { objects })
}

//! A live relocation across two nodes: the sender's node drives its
//! QEMU, the receiver's node drives its own, and they agree on each step
//! over a control [`Tunnel`] (the disk and memory streams travel in
//! tunnels of their own). The steps are [`super::live`]'s, in the same
//! order as [`super::live::live_copy`] runs them in one process:
//!
//! ```text
//! receiver                              sender
//! receiver_export ──── Exported ──────►
//!                                       sender_mirror (disks in sync)
//!                 ◄─── Incoming ──────
//! receiver_incoming ── Listening ─────►
//!                                       sender_migrate (sender paused)
//!                                       sender_release (mirrors stopped)
//!                 ◄─── Switch ────────
//!                                       sender_tidy (jobs, NBD clients)
//! receiver_switch (cont) ── Running ──►
//! ```
//!
//! Between two volume-streaming storages (zfs, qemu driver) the offer
//! names the stream kind and the receiver first answers `Streams`: the
//! sender puts a transfer overlay on each disk
//! ([`super::live::sender_overlays`]), takes a transfer point of each
//! volume and streams it (`vol:I` tunnels) while the guest runs on the
//! overlays, then says `Streamed`; the receiver takes the streams,
//! starts its paused QEMU on the received volumes and goes on with
//! `receiver_export` as above. The mirrors then carry only the overlays'
//! clusters (`sync: top`).
//!
//! Either side may send `Abort` instead of its next message; a side
//! that fails sends it and stops. Before `Switch` the sender may abort
//! ([`super::live::abort`]: its guest runs on) and the receiver's QEMU,
//! which never ran guest code, is discarded; the receiver sends `cont`
//! only on `Switch`, which the sender sends only once it is paused for
//! good with every write on the receiver. A control connection lost
//! after `Switch` was sent and before `Running` arrived leaves the
//! outcome to the receiver's record (docs/ALGORITHMS.md, "Relocation"):
//! the sender then stays paused, never resumes on its own.

use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::live::{
    outcome, receiver_export, receiver_incoming, receiver_switch, sender_migrate, sender_mirror,
    sender_release, sender_tidy, LiveError, LiveOutcome, LivePlan, LiveProgress,
};
use super::tunnel::Tunnel;
use crate::qemu::qmp::Qmp;

/// A control message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Step {
    /// Receiver: its disks are exported.
    Exported,
    /// Receiver (offline): it takes the disks as volume streams of the
    /// kind the offer names (`zfs send`), the bulk while the VM runs.
    Streams,
    /// Receiver: as `Streams`, but it holds the VM's volumes at this
    /// FASTR point (its copies, which the offer's `bases` list): only
    /// what changed since comes.
    StreamsFrom(String),
    /// Sender (live, after `Streams`): every volume stream is in; start
    /// the paused QEMU on the received volumes and export them.
    Streamed,
    /// Sender: the disks are in sync; take the memory stream.
    Incoming,
    /// Receiver: listening for the memory stream.
    Listening,
    /// Sender: paused for good, every write on the receiver; run.
    Switch,
    /// Receiver: the guest runs here.
    Running,
    /// Either: stop, for this reason.
    Abort(String),
}

/// Why a two-node relocation stopped.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// This side's QEMU failed a step.
    #[error(transparent)]
    Live(#[from] LiveError),
    /// The control tunnel failed or closed.
    #[error("control: {0}")]
    Control(String),
    /// This side refused or could not go on.
    #[error("{0}")]
    Here(String),
    /// The other side aborted.
    #[error("the other node aborted: {0}")]
    Aborted(String),
    /// The control connection failed after `Switch` was sent: the guest
    /// may already run on the receiver. The sender stays paused and
    /// learns the outcome from the VM's claim (the receiver takes it
    /// when it runs the guest).
    #[error("no word from the receiver after the switch: {0}")]
    Undecided(String),
    /// The other side sent something out of turn.
    #[error("control: expected {expected}, got {got:?}")]
    Unexpected {
        /// What this side waited for.
        expected: &'static str,
        /// What came.
        got: Step,
    },
}

pub(crate) async fn say(control: &mut Tunnel, step: &Step) -> Result<(), SessionError> {
    let bytes = serde_json::to_vec(step).expect("in-memory encoding cannot fail");
    control
        .send(&bytes)
        .await
        .map_err(|e| SessionError::Control(e.to_string()))
}

/// The next message from the other side.
pub(crate) async fn next(control: &mut Tunnel) -> Result<Step, SessionError> {
    let got = control
        .recv()
        .await
        .map_err(|e| SessionError::Control(e.to_string()))?
        .ok_or_else(|| SessionError::Control("closed by the other node".into()))?;
    serde_json::from_slice(&got)
        .map_err(|e| SessionError::Control(format!("malformed message: {e}")))
}

pub(crate) async fn expect(
    control: &mut Tunnel,
    want: Step,
    name: &'static str,
) -> Result<(), SessionError> {
    let got = next(control).await?;
    match got {
        g if g == want => Ok(()),
        Step::Abort(why) => Err(SessionError::Aborted(why)),
        got => Err(SessionError::Unexpected {
            expected: name,
            got,
        }),
    }
}

/// Tell the other side, best effort, then return the error.
async fn fail<T>(control: &mut Tunnel, e: SessionError) -> Result<T, SessionError> {
    if !matches!(
        e,
        SessionError::Aborted(_) | SessionError::Control(_) | SessionError::Undecided(_)
    ) {
        let _ = say(control, &Step::Abort(e.to_string())).await;
    }
    Err(e)
}

/// The sender's side. On error, call [`super::live::abort`] unless it is
/// [`SessionError::Undecided`] (then the guest may already run on the
/// receiver: stay paused, and learn the outcome from the VM's claim).
pub async fn run_sender(
    control: &mut Tunnel,
    sender: &mut Qmp,
    plan: &LivePlan,
    progress: impl FnMut(LiveProgress),
) -> Result<LiveOutcome, SessionError> {
    run_sender_from(control, sender, plan, progress, false).await
}

/// [`run_sender`], `Exported` already received when `exported`.
pub async fn run_sender_from(
    control: &mut Tunnel,
    sender: &mut Qmp,
    plan: &LivePlan,
    mut progress: impl FnMut(LiveProgress),
    exported: bool,
) -> Result<LiveOutcome, SessionError> {
    let t0 = Instant::now();
    let r = async {
        if !exported {
            expect(control, Step::Exported, "Exported").await?;
        }
        let disk_bytes = sender_mirror(sender, plan, &mut progress).await?;
        let mirror_ready_ms = t0.elapsed().as_millis() as u64;
        say(control, &Step::Incoming).await?;
        expect(control, Step::Listening, "Listening").await?;
        let info = sender_migrate(sender, plan, disk_bytes, &mut progress).await?;
        let switch_start = Instant::now();
        let disk_bytes = sender_release(sender, plan, disk_bytes, &info, &mut progress).await?;
        let switched = async {
            say(control, &Step::Switch).await?;
            // While the receiver runs `cont`: nothing here writes to it
            // any more.
            sender_tidy(sender, plan).await;
            expect(control, Step::Running, "Running").await
        };
        match switched.await {
            Ok(()) => {}
            Err(SessionError::Aborted(why)) => return Err(SessionError::Aborted(why)),
            Err(e) => return Err(SessionError::Undecided(e.to_string())),
        }
        Ok(outcome(
            t0,
            mirror_ready_ms,
            switch_start,
            disk_bytes,
            &info,
        ))
    }
    .await;
    match r {
        Ok(o) => Ok(o),
        Err(e) => fail(control, e).await,
    }
}

/// The receiver's side. On error its QEMU never ran guest code (an
/// error of `cont` itself aside); the caller discards it. `Ok`: the
/// guest runs here, even if the sender did not hear `Running`.
pub async fn run_receiver(
    control: &mut Tunnel,
    receiver: &mut Qmp,
    plan: &LivePlan,
) -> Result<(), SessionError> {
    let r = async {
        receiver_export(receiver, plan).await?;
        say(control, &Step::Exported).await?;
        expect(control, Step::Incoming, "Incoming").await?;
        receiver_incoming(receiver, plan).await?;
        say(control, &Step::Listening).await?;
        expect(control, Step::Switch, "Switch").await?;
        receiver_switch(receiver, plan).await?;
        // The guest runs here now, whatever becomes of this message.
        if let Err(e) = say(control, &Step::Running).await {
            tracing::warn!(error = %e, "the guest runs here; the sender did not hear so");
        }
        Ok(())
    }
    .await;
    match r {
        Ok(()) => Ok(()),
        Err(e) => fail(control, e).await,
    }
}

//! Fields (and one kind) that validate but have no effect yet.
//!
//! The model describes more than the node carries out today. A user who
//! writes `fastr:` or `isolation:` deserves to hear that nothing will
//! happen, rather than find out when a satellite dies. This list is the
//! one answer: `deorch validate` prints each entry as a warning at the
//! field's position, and the reconcilers put the same list in the object's
//! status as the [`NO_EFFECT_YET`] condition ([`no_effect_condition`]).
//!
//! An entry goes away in the change that makes its feature work; the
//! entries are tested one by one in `tests/validate.rs`. A field is listed
//! only when the value given differs from what the node does anyway
//! (`firmware: bios` is what every VM gets, so only `uefi` is listed).

use super::yaml::{render_path, Seg};
use crate::model::common::Placement;
use crate::model::network::{IsolationMode, NetworkSpec};
use crate::model::satellite::SatelliteSpec;
use crate::model::spacesuit::SpacesuitSpec;
use crate::model::vm::{Firmware, VirtualMachineSpec};
use crate::model::AnyObject;

/// The status condition type that lists an object's inert fields.
pub const NO_EFFECT_YET: &str = "NoEffectYet";

/// One field that validates but does nothing yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InertField {
    /// Where, e.g. `spec.placement.strict`.
    pub path: Vec<Seg>,
    /// What the node does instead.
    pub message: String,
}

impl InertField {
    /// The path as users read it.
    pub fn path_string(&self) -> String {
        render_path(&self.path)
    }
}

fn path(parts: &[&str]) -> Vec<Seg> {
    parts.iter().map(|p| Seg::Key((*p).into())).collect()
}

fn inert(parts: &[&str], message: &str) -> InertField {
    InertField {
        path: path(parts),
        message: format!("has no effect yet: {message}"),
    }
}

/// Every field of `obj` that validates but does nothing yet, in the order
/// of the spec.
pub fn no_effect_yet(obj: &AnyObject) -> Vec<InertField> {
    let mut out = Vec::new();
    match obj {
        AnyObject::VirtualMachine(o) => vm(&o.spec, &mut out),
        AnyObject::Spacesuit(o) => spacesuit(&o.spec, &mut out),
        AnyObject::Network(o) => network(&o.spec, &mut out),
        AnyObject::Satellite(o) => satellite(&o.spec, &mut out),
        AnyObject::AccessPolicy(_) => {}
        AnyObject::Relocation(_) => {}
        AnyObject::Replica(_) | AnyObject::Dataset(_) => {}
    }
    out
}

fn strict(at: &[&str], p: &Placement, out: &mut Vec<InertField>) {
    if p.strict && p.by_hand() {
        let mut parts = at.to_vec();
        parts.push("strict");
        out.push(inert(
            &parts,
            "strict mode with a placement by hand (node or address): strict mode applies to VMs the radar places",
        ));
    }
}

fn vm(s: &VirtualMachineSpec, out: &mut Vec<InertField>) {
    if s.firmware == Some(Firmware::Uefi) {
        out.push(inert(
            &["spec", "firmware"],
            "VMs boot with SeaBIOS (or their kernel directly); no OVMF is loaded",
        ));
    }
    if let Some(c) = &s.console {
        if !c.vnc {
            out.push(inert(
                &["spec", "console", "vnc"],
                "every VM's console is served over VNC",
            ));
        }
        if !c.websocket {
            out.push(inert(
                &["spec", "console", "websocket"],
                "every VM's VNC console also has its noVNC websocket",
            ));
        }
    }
    if let Some(p) = &s.placement {
        strict(&["spec", "placement"], p, out);
    }
    if s.array.is_some() {
        out.push(inert(
            &["spec", "array"],
            "tenant arrays are not enforced: the VM counts against the satellite as a whole",
        ));
    }
}

fn spacesuit(s: &SpacesuitSpec, out: &mut Vec<InertField>) {
    if s.firmware == Some(Firmware::Uefi) {
        out.push(inert(
            &["spec", "firmware"],
            "VMs boot with SeaBIOS (or their kernel directly); no OVMF is loaded",
        ));
    }
}

fn network(s: &NetworkSpec, out: &mut Vec<InertField>) {
    if let Some(iso) = &s.isolation {
        if iso.mode == IsolationMode::None && (iso.interstellar.is_some() || iso.vni.is_some()) {
            out.push(inert(
                &["spec", "isolation"],
                "`interstellar` and `vni` name a segment only with mode Interstellar or ArplessInterstellar",
            ));
        }
    }
}

fn satellite(s: &SatelliteSpec, out: &mut Vec<InertField>) {
    if s.satellite_id.is_some() {
        out.push(inert(
            &["spec", "satelliteId"],
            "nothing checks a node's key against it",
        ));
    }
    if s.gossip.is_some() {
        out.push(inert(
            &["spec", "gossip"],
            "a node listens on its --gossip-listen address and finds peers through --seed, not this endpoint",
        ));
    }
    if s.capacity.as_ref().is_some_and(|c| c.network.is_some()) {
        out.push(inert(
            &["spec", "capacity", "network"],
            "placement counts CPU, memory and storage only",
        ));
    }
    if !s.arrays.is_empty() {
        out.push(inert(
            &["spec", "arrays"],
            "tenant arrays are not enforced: VMs are placed against the satellite's whole capacity",
        ));
    }
}

/// The [`NO_EFFECT_YET`] condition for `obj`: `Some((reason, message))`
/// when it has inert fields (set the condition `True` with them), `None`
/// when it has none (remove the condition). The message names every
/// field, so `deorch get` shows what `deorch validate` warned about.
pub fn no_effect_condition(obj: &AnyObject) -> Option<(&'static str, String)> {
    let fields = no_effect_yet(obj);
    if fields.is_empty() {
        return None;
    }
    let message = fields
        .iter()
        .map(|f| format!("{}: {}", f.path_string(), f.message))
        .collect::<Vec<_>>()
        .join("; ");
    Some(("FieldsIgnored", message))
}

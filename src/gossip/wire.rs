//! What gossip carries: identities, member updates, the three kinds of
//! replicated entries (documents, claims, node status) and the messages,
//! encoded with `postcard` (compact, non-self-describing).
//!
//! Every struct here is plain data with no `skip_serializing_if`: postcard
//! needs every field present, so the model's YAML-facing types (which skip
//! empty fields) are converted into the wire types at the edge.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::rng::hash64;
use crate::model::{Performance, Tags};

/// Where a node receives gossip datagrams.
pub type NodeAddr = SocketAddr;

/// Milliseconds: Unix time on a real node, virtual time in the simulation.
pub type Millis = u64;

/// A node's identity: its satellite ID (the Bitcoin address of its key).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NodeId(pub String);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl NodeId {
    /// Stable 64-bit hash (rendezvous scores, tie-breaks).
    pub fn hash64(&self) -> u64 {
        hash64(&[b"node", self.0.as_bytes()])
    }
}

/// SWIM state of a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemberState {
    /// Answering probes.
    Alive,
    /// Missed a probe; declared dead unless it refutes in time.
    Suspect,
    /// Declared dead.
    Dead,
}

/// One membership fact, spread piggybacked on probes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberUpdate {
    /// Whom it is about.
    pub id: NodeId,
    /// Its gossip address.
    pub addr: NodeAddr,
    /// Its incarnation (only the member itself raises it, to refute).
    pub incarnation: u64,
    /// The state claimed.
    pub state: MemberState,
}

/// Identity of a desired-state document: kind, namespace, name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct DocKey {
    /// Kind, e.g. `VirtualMachine`.
    pub kind: String,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl DocKey {
    /// A key from its three parts.
    pub fn new(kind: &str, namespace: &str, name: &str) -> Self {
        DocKey {
            kind: kind.into(),
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// Stable 64-bit hash.
    pub fn hash64(&self) -> u64 {
        hash64(&[
            self.kind.as_bytes(),
            self.namespace.as_bytes(),
            self.name.as_bytes(),
        ])
    }
}

impl fmt::Display for DocKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.kind, self.namespace, self.name)
    }
}

/// A desired-state document: a (signed) manifest as bytes, or its
/// tombstone. Which version wins is [`Version`]'s order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Document {
    /// kind/namespace/name.
    pub key: DocKey,
    /// `metadata.generation`; a deletion carries the next one.
    pub generation: u64,
    /// A tombstone.
    pub deleted: bool,
    /// When the author wrote this version (Unix ms). Tombstones are
    /// collected `tombstone_horizon` after it, on every node alike.
    pub written_ms: Millis,
    /// The manifest (canonical JSON of a signed manifest on a real node).
    pub body: Vec<u8>,
}

impl Document {
    /// Content hash: the deterministic tie-break between two versions of
    /// the same generation.
    pub fn content_hash(&self) -> u64 {
        hash64(&[
            self.key.kind.as_bytes(),
            self.key.namespace.as_bytes(),
            self.key.name.as_bytes(),
            &self.generation.to_le_bytes(),
            &[self.deleted as u8],
            &self.written_ms.to_le_bytes(),
            &self.body,
        ])
    }
}

/// "VM `vm` runs on `node`", at an election `epoch`. Claims of one VM
/// merge like documents: the higher `(epoch, score, node hash)` wins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    /// The VirtualMachine document.
    pub vm: DocKey,
    /// The claimant.
    pub node: NodeId,
    /// Election round: 1 for the first placement, +1 per re-election.
    pub epoch: u64,
    /// The claimant's rendezvous score for this VM when it claimed.
    pub score: u64,
    /// When it claimed (ms), for garbage collection with the VM's tombstone.
    pub claimed_ms: Millis,
    /// The claimant's signature of the other fields
    /// ([`crate::identity::node_sig`], domain [`CLAIM_DOMAIN`]); empty
    /// where nodes do not sign (`--gossip-verify unsigned`, simulations).
    pub sig: Vec<u8>,
}

/// Signature domain of a claim.
pub const CLAIM_DOMAIN: &str = "deorch-claim/v1";
/// Signature domain of a node status.
pub const STATUS_DOMAIN: &str = "deorch-status/v1";

impl Claim {
    /// What the claimant signs: the claim without its signature.
    pub fn signed_bytes(&self) -> Vec<u8> {
        let unsigned = Claim {
            sig: Vec::new(),
            ..self.clone()
        };
        postcard::to_allocvec(&unsigned).expect("in-memory encoding cannot fail")
    }
}

/// CPU (millicores), memory and storage (bytes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    /// CPU in millicores.
    pub cpu_millis: u64,
    /// Memory in bytes.
    pub memory: u64,
    /// Storage in bytes.
    pub storage: u64,
}

impl Resources {
    /// Whether `need` fits in `self`.
    pub fn fits(&self, need: &Resources) -> bool {
        self.cpu_millis >= need.cpu_millis
            && self.memory >= need.memory
            && self.storage >= need.storage
    }
}

/// The three tag families, as carried on the wire.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TagSet {
    /// Row, rack, CPU, network.
    pub microcosm: BTreeMap<String, String>,
    /// Region.
    pub macrocosm: BTreeMap<String, String>,
    /// Team, provider, owner.
    pub intercosm: BTreeMap<String, String>,
}

impl From<&Tags> for TagSet {
    fn from(t: &Tags) -> Self {
        TagSet {
            microcosm: t.microcosm.clone(),
            macrocosm: t.macrocosm.clone(),
            intercosm: t.intercosm.clone(),
        }
    }
}

/// What a node says about itself; each new version replaces the last.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// The node (satellite ID: its address).
    pub id: NodeId,
    /// Its name (a label; where an AccessPolicy admits the node, the name
    /// it gives wins).
    pub name: String,
    /// Its incarnation when it wrote this (a restarted node starts higher).
    pub incarnation: u64,
    /// Counter within the incarnation.
    pub seq: u64,
    /// Tags (node's, with the tenants' arrays merged by the caller).
    pub tags: TagSet,
    /// `high` or `low`.
    pub performance: Performance,
    /// Capacity offered to VMs.
    pub total: Resources,
    /// Capacity not used.
    pub free: Resources,
    /// Load average × 1000.
    pub load_milli: u32,
    /// VMs running here.
    pub vms: Vec<DocKey>,
    /// Cordoned: no new placements.
    pub unschedulable: bool,
    /// Unix ms until which the node is away by choice (a graceful stop for
    /// an upgrade; its VMs run on): peers do not re-elect its VMs before.
    /// 0: not away.
    pub away_until_ms: u64,
    /// Its hypervisor's accelerator (`kvm`, `tcg`; empty: unknown): a
    /// running VM moves only between nodes with the same one.
    pub accel: String,
    /// Its host CPU ([`crate::reconcile::satellite::cpu_signature`];
    /// empty: unknown): a running VM with the `host` CPU model under KVM
    /// moves only between nodes with the same one.
    pub cpu: String,
    /// The spacesuit images it holds, each as the first 8 bytes of its
    /// SHA-256 (big-endian), and the volumes of spacesuits made from a VM
    /// it holds ([`volume_hint`]), at most [`MAX_STATUS_IMAGES`]: the
    /// election prefers a node that has a new VM's image over one that
    /// must fetch it, and a node without a spacesuit's volume learns who
    /// to copy it from. A hint only: the fetch checks.
    pub images: Vec<u64>,
    /// The FASTR copies it holds: (the VM's [`DocKey::hash64`], its
    /// newest complete point, unix ms), at most [`MAX_STATUS_COPIES`]:
    /// when a VM's node dies, only the holders of its newest point may
    /// start it.
    pub copies: Vec<(u64, u64)>,
    /// Where the node serves its page (`https://ADDR:PORT/`; empty: it
    /// serves none), at most [`MAX_STATUS_PAGE`] bytes: the page of any
    /// node links to the others'.
    pub page: String,
    /// The node's signature of the other fields (domain
    /// [`STATUS_DOMAIN`]); empty where nodes do not sign.
    pub sig: Vec<u8>,
}

/// FASTR copies a status lists at most.
pub const MAX_STATUS_COPIES: usize = 256;

/// The longest page URL a status carries.
pub const MAX_STATUS_PAGE: usize = 256;

/// Images a status lists at most (8 bytes each).
pub const MAX_STATUS_IMAGES: usize = 64;

/// An image's SHA-256 (hex) as a status lists it: its first 8 bytes;
/// `None` for anything that is not a SHA-256.
pub fn image_hint(sha256: &str) -> Option<u64> {
    if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(&sha256[..16], 16).ok()
}

/// A spacesuit volume as a status lists it: the first 8 bytes of the
/// SHA-256 of `volume:` and its name (a spacesuit made from a VM has no
/// image hash; its volume's name is unique in the cluster).
pub fn volume_hint(volume: &str) -> u64 {
    use sha2::{Digest, Sha256};
    let h = Sha256::digest(format!("volume:{volume}").as_bytes());
    u64::from_be_bytes(h[..8].try_into().expect("8 bytes"))
}

impl NodeStatus {
    /// A node with nothing running yet: all of `total` free, no load.
    pub fn idle(
        id: NodeId,
        seq: u64,
        tags: TagSet,
        performance: Performance,
        total: Resources,
    ) -> NodeStatus {
        NodeStatus {
            name: id.0.clone(),
            id,
            incarnation: 0,
            seq,
            tags,
            performance,
            total,
            free: total,
            load_milli: 0,
            vms: Vec::new(),
            unschedulable: false,
            away_until_ms: 0,
            accel: String::new(),
            cpu: String::new(),
            images: Vec::new(),
            copies: Vec::new(),
            page: String::new(),
            sig: Vec::new(),
        }
    }

    /// What the node signs: the status without its signature.
    pub fn signed_bytes(&self) -> Vec<u8> {
        let unsigned = NodeStatus {
            sig: Vec::new(),
            ..self.clone()
        };
        postcard::to_allocvec(&unsigned).expect("in-memory encoding cannot fail")
    }
}

/// The replicated entries and their keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Entry {
    /// A desired-state document.
    Doc(Document),
    /// A placement claim.
    Claim(Claim),
    /// A node's status.
    Status(Box<NodeStatus>),
}

/// Key of an [`Entry`]: one live version per key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum EntryKey {
    /// Document key.
    Doc(DocKey),
    /// The VM a claim is about.
    Claim(DocKey),
    /// The node a status is about.
    Status(NodeId),
}

/// Total order of versions of one key; the greater one wins every merge.
/// Documents: (generation, tombstone, content hash). Claims: (epoch,
/// score, node hash). Status: (incarnation, seq, 0).
pub type Version = (u64, u64, u64);

impl Entry {
    /// Its key.
    pub fn key(&self) -> EntryKey {
        match self {
            Entry::Doc(d) => EntryKey::Doc(d.key.clone()),
            Entry::Claim(c) => EntryKey::Claim(c.vm.clone()),
            Entry::Status(s) => EntryKey::Status(s.id.clone()),
        }
    }

    /// Its version (computed; hashes the body of a document).
    pub fn version(&self) -> Version {
        match self {
            Entry::Doc(d) => (d.generation, d.deleted as u64, d.content_hash()),
            Entry::Claim(c) => (c.epoch, c.score, c.node.hash64()),
            Entry::Status(s) => (s.incarnation, s.seq, 0),
        }
    }
}

/// A datagram: who sends it and what.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// Sender.
    pub from: NodeId,
    /// Sender's gossip address.
    pub addr: NodeAddr,
    /// Sender's incarnation: direct evidence that it is alive.
    pub incarnation: u64,
    /// Payload.
    pub body: Body,
}

/// Message payloads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Body {
    /// Home-made SWIM probe (`deorch bench membership` only).
    Ping {
        /// Sequence number echoed by the ack.
        seq: u64,
        /// Piggybacked membership updates.
        updates: Vec<MemberUpdate>,
    },
    /// Answer to a ping (or relayed for a ping-req).
    Ack {
        /// The ping's sequence number.
        seq: u64,
        /// Piggybacked membership updates.
        updates: Vec<MemberUpdate>,
    },
    /// "Probe `target` for me" (SWIM indirect probe).
    PingReq {
        /// Requester's sequence number, echoed in the relayed ack.
        seq: u64,
        /// Who to probe.
        target: NodeAddr,
        /// Piggybacked membership updates.
        updates: Vec<MemberUpdate>,
    },
    /// A new node asks for the member list.
    Join,
    /// Member list (answer to `Join`, or a refutation notice).
    Members(Vec<MemberUpdate>),
    /// Push gossip of new entries.
    Gossip(Vec<Entry>),
    /// Anti-entropy, step 1: per-bucket XOR of entry hashes.
    Digest(Vec<u64>),
    /// Anti-entropy, step 2: the buckets that differ and my versions in
    /// them.
    DigestReply {
        /// Bucket indices that differ.
        buckets: Vec<u16>,
        /// My versions in those buckets.
        versions: Vec<(EntryKey, Version)>,
    },
    /// Anti-entropy, step 3: send me these entries.
    Pull(Vec<EntryKey>),
    /// A datagram of the membership protocol (foca, see
    /// [`super::members`]); `Ping` to `Members` above are the home-made
    /// SWIM's, kept as `deorch bench membership`'s baseline.
    Foca(Vec<u8>),
}

/// Why a datagram could not be decoded.
#[derive(Debug, thiserror::Error)]
#[error("malformed gossip datagram: {0}")]
pub struct DecodeError(String);

/// Encode an envelope.
pub fn encode(env: &Envelope) -> Vec<u8> {
    postcard::to_allocvec(env).expect("in-memory encoding cannot fail")
}

/// Decode a datagram.
pub fn decode(bytes: &[u8]) -> Result<Envelope, DecodeError> {
    postcard::from_bytes(bytes).map_err(|e| DecodeError(e.to_string()))
}

/// Encoded size of an entry (bounding message sizes).
pub fn entry_len(e: &Entry) -> usize {
    postcard::experimental::serialized_size(e).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_round_trips_and_garbage_is_an_error() {
        let env = Envelope {
            from: NodeId("n1".into()),
            addr: "127.0.0.1:7946".parse().unwrap(),
            incarnation: 3,
            body: Body::Gossip(vec![Entry::Doc(Document {
                key: DocKey::new("VirtualMachine", "default", "web"),
                generation: 2,
                deleted: false,
                written_ms: 1,
                body: b"{}".to_vec(),
            })]),
        };
        let bytes = encode(&env);
        assert_eq!(decode(&bytes).unwrap(), env);
        assert!(decode(&bytes[..bytes.len() - 1]).is_err());
        assert!(decode(&[0xff; 7]).is_err());
    }

    #[test]
    fn tombstone_beats_same_generation_and_newer_generation_beats_both() {
        let mut d = Document {
            key: DocKey::new("VirtualMachine", "default", "web"),
            generation: 2,
            deleted: false,
            written_ms: 1,
            body: b"{}".to_vec(),
        };
        let live = Entry::Doc(d.clone()).version();
        d.deleted = true;
        let tomb = Entry::Doc(d.clone()).version();
        d.deleted = false;
        d.generation = 3;
        let newer = Entry::Doc(d).version();
        assert!(live < tomb && tomb < newer);
    }
}

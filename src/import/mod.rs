//! Import of a foreign disk image or appliance as a Spacesuit: what a user
//! would otherwise do by hand (`qemu-img convert` the disk into the node's
//! image directory, hash it, write the Spacesuit manifest), done once.
//!
//! ```text
//! FILE ──► what is it? ── tar (ustar magic) ─► OVA: members in place; the .ovf read,
//!   │                    └ .ovf ─────────────► OVF: disks beside it
//!   │                    └ else ─────────────► one disk (qemu-img info: vmdk, vpc, vhdx, qcow2, raw, vdi)
//!   ▼
//! each disk: qemu-img convert -p ─► IMAGES/NS/SUIT.qcow2.part   (an OVA's disks read straight out of
//!            (its .mf digest checked meanwhile, on another core)  the archive: no extraction)
//!            SHA-256 (unless --no-sha256)
//! all disks made ─► each renamed to IMAGES/NS/SUIT.qcow2 (a failure leaves none)
//!   ▼
//! Spacesuit NAME: first disk (spec.source), further disks (spec.disks:
//! disk2, ...), CPUs, memory, firmware, NICs (spec.nics); what it cannot
//! hold (blank disks, the appliance's MACs) in its annotations
//! + a VirtualMachine made from it, as a comment to start from
//! ```
//!
//! The Spacesuit names its image by path and SHA-256, so the node that
//! imports it checks the file first, and nodes without the file fetch it
//! from one that has it by that hash (each further disk's image too). An
//! OVF network becomes the deorch Network of its name made a DNS label
//! (`VM Network` → `vm-network`, [`network_name`]); the spacesuit's NICs
//! carry no MAC (every VM made from it derives its own), so the
//! appliance's MACs, like the original network names and card types
//! deorch lacks, are noted in the annotations. The SHA-256 is also what makes a crash safe: the file
//! is renamed into place unsynced, and a torn file fails the node's check
//! rather than becoming a disk.

pub mod ovf;
pub mod qemu_img;
pub mod tar;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use crate::manifest::semantic::is_dns_label;
use crate::model::common::{Cpu, Quantity};
use crate::model::spacesuit::{ImageFormat, ImageSource, SpacesuitDisk, SpacesuitSource};
use crate::model::vm::{DiskBus, Nic, NicModel, VirtualMachineSpec};
use crate::model::{Manifest, SpacesuitSpec};
use qemu_img::Source;

/// Where imported images go unless told otherwise.
pub const DEFAULT_IMAGES: &str = "/var/lib/deorch/images";

/// The `qemu-img` formats an import reads.
pub const READABLE: &[&str] = &["vmdk", "vpc", "vhdx", "qcow2", "raw", "vdi"];

/// Largest OVF descriptor read.
const MAX_OVF: u64 = 16 << 20;

/// The format of the imported image (what the Spacesuit's image is).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    /// qcow2: sparse, what `dir` storage keeps volumes in.
    #[default]
    Qcow2,
    /// raw: what `zfs` storage keeps in its datasets.
    Raw,
}

impl Target {
    /// The `qemu-img` format name.
    pub fn as_str(self) -> &'static str {
        match self {
            Target::Qcow2 => "qcow2",
            Target::Raw => "raw",
        }
    }
    fn image_format(self) -> ImageFormat {
        match self {
            Target::Qcow2 => ImageFormat::Qcow2,
            Target::Raw => ImageFormat::Raw,
        }
    }
}

/// What to import, and where.
#[derive(Debug, Clone)]
pub struct Request {
    /// A disk image, an `.ova` or an `.ovf`.
    pub file: PathBuf,
    /// The Spacesuit's name.
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    /// Image directory: images go to `IMAGES/NAMESPACE/SUIT.EXT`.
    pub images: PathBuf,
    /// The disk's `qemu-img` format, instead of probing (a single disk).
    pub format: Option<String>,
    /// Format of the imported image.
    pub target: Target,
    /// Replace images already there.
    pub replace: bool,
    /// Hash the image for the Spacesuit's `sha256` (what lets other nodes
    /// fetch it, and the importing node check it).
    pub sha256: bool,
}

/// Told how an import advances (a progress bar, or nothing).
pub trait Progress {
    /// A new step: `what` it does, over `total` bytes.
    fn step(&mut self, what: &str, total: u64);
    /// Bytes of the current step done so far.
    fn done(&mut self, bytes: u64);
}

/// No progress shown.
pub struct Quiet;

impl Progress for Quiet {
    fn step(&mut self, _: &str, _: u64) {}
    fn done(&mut self, _: u64) {}
}

/// An import that could not be made; the message names the file (and the
/// OVF element) and what was expected.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The input is not something the import reads, or is damaged.
    #[error("{file}: {message}")]
    Input {
        /// The file (an OVA member as `ARCHIVE:MEMBER`).
        file: String,
        /// What is wrong and what was expected.
        message: String,
    },
    /// The OVF descriptor is wrong.
    #[error("{file}:{error}")]
    Ovf {
        /// The descriptor (an OVA member as `ARCHIVE:MEMBER`).
        file: String,
        /// Line, column, element and message.
        error: ovf::OvfError,
    },
    /// `qemu-img` failed on a disk.
    #[error("{file}: qemu-img {op} failed: {message}")]
    QemuImg {
        /// The disk.
        file: String,
        /// `info` or `convert`.
        op: &'static str,
        /// What qemu-img said.
        message: String,
    },
    /// An image of that name is there already.
    #[error("{} exists already: pass --force to replace it", path.display())]
    Exists {
        /// The image.
        path: PathBuf,
    },
    /// The spacesuit's name (or a name derived from it) is not valid.
    #[error("spacesuit name {name:?}: {message}")]
    Name {
        /// The name.
        name: String,
        /// What was expected.
        message: String,
    },
    /// Reading or writing a file failed.
    #[error("{}: {error}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        error: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ImportError + '_ {
    move |error| ImportError::Io {
        path: path.to_path_buf(),
        error,
    }
}

fn input(file: impl Into<String>, message: impl Into<String>) -> ImportError {
    ImportError::Input {
        file: file.into(),
        message: message.into(),
    }
}

/// One imported disk.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ImportedDisk {
    /// Its name in the Spacesuit: `root` (the first disk, `spec.source`),
    /// then `disk2`, `disk3`, ... (`spec.disks`).
    pub disk: String,
    /// Where the disk came from (`ARCHIVE:MEMBER` for an OVA's).
    pub from: String,
    /// `qemu-img`'s name of its format, and the vmdk subformat.
    pub source_format: String,
    /// vmdk subformat (`streamOptimized`, ...).
    pub subformat: Option<String>,
    /// The imported image.
    pub path: PathBuf,
    /// Its SHA-256 (hex), unless the request said not to hash.
    pub sha256: Option<String>,
    /// Size the guest sees.
    pub virtual_size: u64,
    /// Bytes of the imported image.
    pub image_size: u64,
}

/// The outcome: the manifests and what they were made of.
#[derive(Debug, Clone)]
pub struct Imported {
    /// The Spacesuit: every disk, and for an appliance its CPUs, memory,
    /// firmware and NICs.
    pub spacesuit: Manifest<SpacesuitSpec>,
    /// The imported disks, in order (the first is `spec.source`).
    pub disks: Vec<ImportedDisk>,
    /// For an appliance: a VM made from the spacesuit, to start from.
    pub vm: Option<Manifest<VirtualMachineSpec>>,
}

impl Imported {
    /// The Spacesuit as a YAML document, then the VM as a comment.
    pub fn to_yaml(&self) -> Result<String, String> {
        let mut out = serde_saphyr::to_string(&self.spacesuit).map_err(|e| e.to_string())?;
        if let Some(vm) = &self.vm {
            out.push_str(
                "# A VirtualMachine made from it: every disk and NIC of the appliance\n\
                 # (its NICs join the deorch Networks the spacesuit's name):\n",
            );
            let text = serde_saphyr::to_string(vm).map_err(|e| e.to_string())?;
            for line in text.lines() {
                out.push_str("# ");
                out.push_str(line);
                out.push('\n');
            }
        }
        Ok(out)
    }
}

/// What the input is.
enum Kind {
    Disk,
    Ova(Vec<tar::Member>),
    Ovf,
}

/// A disk to convert.
struct Planned {
    suit: String,
    from: String,
    src: Source,
    format: Option<String>,
    /// The file's extension, when it names a format.
    ext: Option<String>,
    in_package: bool,
    /// Digest the package's manifest lists: (algorithm, hex).
    check: Option<(String, String)>,
}

/// Import `req`, reporting progress to `progress`.
pub fn import(req: &Request, progress: &mut dyn Progress) -> Result<Imported, ImportError> {
    check_name(&req.name)?;
    if !is_dns_label(&req.namespace) {
        return Err(ImportError::Name {
            name: req.namespace.clone(),
            message: "a namespace must be a DNS-1123 label".into(),
        });
    }
    // Absolute: qemu-img would read a name starting `json:` as options.
    let file = &std::fs::canonicalize(&req.file).map_err(io(&req.file))?;
    let shown = file.display().to_string();
    let meta = std::fs::metadata(file).map_err(io(file))?;
    if !meta.is_file() {
        return Err(input(
            &shown,
            "not a regular file (expected a disk image, .ova or .ovf)",
        ));
    }
    let mut head = vec![0u8; 4096];
    let n = read_at(file, 0, &mut head).map_err(io(file))?;
    head.truncate(n);
    let ext = file
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase());
    let kind = if tar::looks_like_tar(&head) {
        Kind::Ova(tar::members(file).map_err(|m| input(&shown, m))?)
    } else if ext.as_deref() == Some("ovf") || is_xml(&head) {
        Kind::Ovf
    } else {
        Kind::Disk
    };
    if ext.as_deref() == Some("ova") && !matches!(kind, Kind::Ova(_)) {
        return Err(input(
            &shown,
            "named .ova but not a tar archive (an OVA is a ustar archive of an .ovf and its disks)",
        ));
    }
    if req.format.is_some() && !matches!(kind, Kind::Disk) {
        return Err(input(
            &shown,
            "--format applies to a disk image; an appliance's disks are probed",
        ));
    }
    let (planned, ovf) = match kind {
        Kind::Disk => (
            vec![Planned {
                suit: req.name.clone(),
                from: shown.clone(),
                src: Source::File(shown.clone()),
                format: req.format.clone(),
                ext,
                in_package: false,
                check: None,
            }],
            None,
        ),
        Kind::Ova(members) => {
            let (planned, ovf) = plan_ova(req, &shown, &members)?;
            (planned, Some(ovf))
        }
        Kind::Ovf => {
            let (planned, ovf) = plan_ovf(req, file)?;
            (planned, Some(ovf))
        }
    };
    if planned.is_empty() {
        return Err(input(
            &shown,
            "the OVF names no disk with a file (DiskSection/Disk with ovf:fileRef): nothing to import",
        ));
    }
    let dir = req.images.join(&req.namespace);
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    // The Spacesuit names its image by an absolute path.
    let dir = std::fs::canonicalize(&dir).map_err(io(&dir))?;
    let dests: Vec<PathBuf> = planned
        .iter()
        .map(|p| dir.join(format!("{}.{}", p.suit, req.target.as_str())))
        .collect();
    if !req.replace {
        if let Some(d) = dests.iter().find(|d| d.exists()) {
            return Err(ImportError::Exists { path: d.clone() });
        }
    }
    // All disks or none: each goes to its part file, and only when every
    // one is made are they renamed into place.
    // A disk's SHA-256 is taken on another core while the next disk
    // converts; only the last disk's waits for its conversion to end (a
    // qcow2 is final only once qemu-img closes it).
    let mut disks = Vec::new();
    let made = (|| {
        let mut behind: Option<(usize, Hashing)> = None;
        for (i, (p, dest)) in planned.iter().zip(&dests).enumerate() {
            let last = i + 1 == planned.len();
            let converted = convert_one(p, dest, req.target, progress);
            if let Some((k, h)) = behind.take() {
                disks[k] = with_hash(std::mem::take(&mut disks[k]), h)?;
            }
            disks.push(converted?);
            if req.sha256 && !last {
                let part = part_of(dest);
                behind = Some((
                    i,
                    std::thread::spawn(move || {
                        let size = std::fs::metadata(&part)?.len();
                        hash_range(&part, 0, size, "SHA256", &mut |_| {})
                    }),
                ));
            }
        }
        if let (true, Some(d)) = (req.sha256, disks.last_mut()) {
            let part = part_of(&d.path);
            progress.step(
                &format!("sha256 {}", short(&d.path.display().to_string())),
                d.image_size,
            );
            d.sha256 = Some(
                hash_range(&part, 0, d.image_size, "SHA256", &mut |n| progress.done(n))
                    .map_err(io(&part))?,
            );
        }
        Ok(())
    })();
    if let Err(e) = made {
        for d in &dests {
            let _ = std::fs::remove_file(part_of(d));
        }
        return Err(e);
    }
    for d in &dests {
        let part = part_of(d);
        std::fs::rename(&part, d).map_err(io(d))?;
    }
    for (i, d) in disks.iter_mut().enumerate() {
        d.disk = disk_name(i);
    }
    Ok(manifests(req, disks, ovf.as_ref()))
}

/// A SHA-256 taken on another thread.
type Hashing = std::thread::JoinHandle<std::io::Result<String>>;

/// `d` with the SHA-256 `h` took of its part file.
fn with_hash(mut d: ImportedDisk, h: Hashing) -> Result<ImportedDisk, ImportError> {
    let part = part_of(&d.path);
    let hash = h
        .join()
        .map_err(|_| input(&d.from, "the SHA-256 thread panicked"))?
        .map_err(io(&part))?;
    d.sha256 = Some(hash);
    Ok(d)
}

/// Where the image `dest` is written until every disk is made.
fn part_of(dest: &Path) -> PathBuf {
    PathBuf::from(format!("{}.part", dest.display()))
}

fn check_name(name: &str) -> Result<(), ImportError> {
    if is_dns_label(name) {
        Ok(())
    } else {
        Err(ImportError::Name {
            name: name.into(),
            message: "expected a DNS-1123 label (lower-case letters, digits and '-', at most 63)"
                .into(),
        })
    }
}

fn is_xml(head: &[u8]) -> bool {
    let t = String::from_utf8_lossy(head);
    let t = t.trim_start_matches('\u{feff}').trim_start();
    t.starts_with("<?xml") || t.starts_with("<Envelope") || t.starts_with("<ovf:Envelope")
}

fn read_at(path: &Path, offset: u64, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut f = File::open(path)?;
    f.seek(SeekFrom::Start(offset))?;
    let mut got = 0;
    while got < buf.len() {
        match f.read(&mut buf[got..])? {
            0 => break,
            n => got += n,
        }
    }
    Ok(got)
}

/// The name of disk `i` (0-based) in the Spacesuit.
fn disk_name(i: usize) -> String {
    match i {
        0 => crate::reconcile::vm::SPACESUIT_DISK.to_string(),
        _ => format!("disk{}", i + 1),
    }
}

/// The name of the image file of disk `i` (0-based) of `name`.
fn suit_name(name: &str, i: usize) -> Result<String, ImportError> {
    let s = if i == 0 {
        name.to_string()
    } else {
        format!("{name}-disk{}", i + 1)
    };
    check_name(&s)?;
    Ok(s)
}

/// Digests of a package manifest (`.mf`): `SHA256(file)= hex` lines.
fn digests(text: &str, file: &str) -> Result<BTreeMap<String, (String, String)>, ImportError> {
    let mut out = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let parsed = (|| {
            let (algo, rest) = line.split_once('(')?;
            let (name, rest) = rest.rsplit_once(")")?;
            let hex = rest.trim_start().strip_prefix('=')?.trim();
            Some((
                algo.trim().to_ascii_uppercase(),
                name.to_string(),
                hex.to_ascii_lowercase(),
            ))
        })();
        let Some((algo, name, hex)) = parsed else {
            return Err(input(
                file,
                format!("line {}: expected `SHA256(FILE)= HEX`, got {line:?}", i + 1),
            ));
        };
        if !matches!(algo.as_str(), "SHA1" | "SHA256" | "SHA512") {
            return Err(input(
                file,
                format!(
                    "line {}: digest {algo} is not checked (expected SHA1, SHA256 or SHA512)",
                    i + 1
                ),
            ));
        }
        out.insert(name, (algo, hex));
    }
    Ok(out)
}

fn plan_ova(
    req: &Request,
    shown: &str,
    members: &[tar::Member],
) -> Result<(Vec<Planned>, ovf::Ovf), ImportError> {
    let ends = |m: &tar::Member, e: &str| m.name.to_ascii_lowercase().ends_with(e);
    let ovfs: Vec<&tar::Member> = members.iter().filter(|m| ends(m, ".ovf")).collect();
    let desc = match ovfs.as_slice() {
        [one] => *one,
        [] => {
            return Err(input(
                shown,
                "no .ovf descriptor in the archive (an OVA holds one .ovf and its disks)",
            ))
        }
        _ => {
            return Err(input(
                shown,
                format!(
                    "{} .ovf descriptors in the archive (expected one)",
                    ovfs.len()
                ),
            ))
        }
    };
    let path = Path::new(shown);
    let read_member = |m: &tar::Member, max: u64| -> Result<String, ImportError> {
        if m.size > max {
            return Err(input(
                format!("{shown}:{}", m.name),
                format!("{} bytes (at most {max} read)", m.size),
            ));
        }
        let mut buf = vec![0u8; m.size as usize];
        read_at(path, m.offset, &mut buf).map_err(io(path))?;
        String::from_utf8(buf).map_err(|_| input(format!("{shown}:{}", m.name), "not UTF-8 text"))
    };
    let desc_name = format!("{shown}:{}", desc.name);
    let text = read_member(desc, MAX_OVF)?;
    let ovf = ovf::parse(&text).map_err(|error| ImportError::Ovf {
        file: desc_name.clone(),
        error,
    })?;
    let mf = members.iter().find(|m| ends(m, ".mf"));
    let sums = match mf {
        Some(m) => digests(&read_member(m, 1 << 20)?, &format!("{shown}:{}", m.name))?,
        None => BTreeMap::new(),
    };
    // The descriptor itself, when the manifest lists it.
    if let Some((algo, want)) = sums.get(&desc.name) {
        let got = hash_bytes(algo, text.as_bytes());
        if &got != want {
            return Err(mismatch(&desc_name, algo, &got, want));
        }
    }
    let mut planned = Vec::new();
    for d in ovf.disks.iter() {
        let Some(f) = &d.file else { continue };
        let member = members
            .iter()
            .find(|m| m.name == f.href || m.name.trim_start_matches("./") == f.href)
            .ok_or_else(|| {
                input(
                    shown,
                    format!(
                        "the OVF's file {:?} (href {:?}, disk {:?}) is not in the archive",
                        f.id, f.href, d.id
                    ),
                )
            })?;
        if let Some(size) = f.size {
            if size != member.size {
                return Err(input(
                    format!("{shown}:{}", member.name),
                    format!(
                        "{} bytes, but the OVF's References/File {:?} says ovf:size={size}",
                        member.size, f.id
                    ),
                ));
            }
        }
        planned.push(Planned {
            suit: suit_name(&req.name, planned.len())?,
            from: format!("{shown}:{}", member.name),
            src: Source::Slice {
                file: shown.to_string(),
                offset: member.offset,
                size: member.size,
            },
            format: None,
            ext: None,
            in_package: true,
            check: sums.get(&member.name).cloned(),
        });
    }
    Ok((planned, ovf))
}

fn plan_ovf(req: &Request, file: &Path) -> Result<(Vec<Planned>, ovf::Ovf), ImportError> {
    let shown = file.display().to_string();
    let meta = std::fs::metadata(file).map_err(io(file))?;
    if meta.len() > MAX_OVF {
        return Err(input(
            &shown,
            format!("{} bytes (at most {MAX_OVF} read)", meta.len()),
        ));
    }
    let text = std::fs::read_to_string(file).map_err(io(file))?;
    let ovf = ovf::parse(&text).map_err(|error| ImportError::Ovf {
        file: shown.clone(),
        error,
    })?;
    let base = file.parent().unwrap_or(Path::new("."));
    let mf = file.with_extension("mf");
    let sums = if mf.is_file() {
        let t = std::fs::read_to_string(&mf).map_err(io(&mf))?;
        digests(&t, &mf.display().to_string())?
    } else {
        BTreeMap::new()
    };
    let own = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if let Some((algo, want)) = sums.get(&own) {
        let got = hash_bytes(algo, text.as_bytes());
        if &got != want {
            return Err(mismatch(&shown, algo, &got, want));
        }
    }
    let mut planned = Vec::new();
    for d in ovf.disks.iter() {
        let Some(f) = &d.file else { continue };
        let path = base.join(&f.href);
        if !path.is_file() {
            return Err(input(
                &shown,
                format!(
                    "the OVF's file {:?} (disk {:?}) is not at {}",
                    f.id,
                    d.id,
                    path.display()
                ),
            ));
        }
        let p = path.display().to_string();
        planned.push(Planned {
            suit: suit_name(&req.name, planned.len())?,
            from: p.clone(),
            src: Source::File(p),
            format: None,
            ext: None,
            in_package: true,
            check: sums.get(&f.href).cloned(),
        });
    }
    Ok((planned, ovf))
}

fn mismatch(file: &str, algo: &str, got: &str, want: &str) -> ImportError {
    input(
        file,
        format!(
            "{algo} is {got}, but the package's manifest (.mf) says {want}: damaged or altered"
        ),
    )
}

fn hash_bytes(algo: &str, bytes: &[u8]) -> String {
    let mut h = Hasher::new(algo);
    h.update(bytes);
    h.finish()
}

/// The digests a package manifest may use.
enum Hasher {
    Sha1(sha1::Sha1),
    Sha256(sha2::Sha256),
    Sha512(sha2::Sha512),
}

impl Hasher {
    fn new(algo: &str) -> Hasher {
        use sha2::Digest;
        match algo {
            "SHA1" => Hasher::Sha1(sha1::Sha1::new()),
            "SHA512" => Hasher::Sha512(sha2::Sha512::new()),
            _ => Hasher::Sha256(sha2::Sha256::new()),
        }
    }
    fn update(&mut self, b: &[u8]) {
        use sha2::Digest;
        match self {
            Hasher::Sha1(h) => h.update(b),
            Hasher::Sha256(h) => h.update(b),
            Hasher::Sha512(h) => h.update(b),
        }
    }
    fn finish(self) -> String {
        use sha2::Digest;
        match self {
            Hasher::Sha1(h) => hex::encode(h.finalize()),
            Hasher::Sha256(h) => hex::encode(h.finalize()),
            Hasher::Sha512(h) => hex::encode(h.finalize()),
        }
    }
}

/// The digest of `size` bytes at `offset` of `path`, calling `each` with
/// the bytes done after every block.
fn hash_range(
    path: &Path,
    offset: u64,
    size: u64,
    algo: &str,
    each: &mut dyn FnMut(u64),
) -> std::io::Result<String> {
    let mut f = File::open(path)?;
    f.seek(SeekFrom::Start(offset))?;
    let mut h = Hasher::new(algo);
    let mut buf = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let want = left.min(buf.len() as u64) as usize;
        let n = f.read(&mut buf[..want])?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the file ended early",
            ));
        }
        h.update(&buf[..n]);
        left -= n as u64;
        each(size - left);
    }
    Ok(h.finish())
}

/// A disk's format, probed (or as forced), refused when the import does
/// not read it or when it is not what its name says.
fn detect(p: &Planned) -> Result<qemu_img::Info, ImportError> {
    let info =
        qemu_img::info(&p.src, p.format.as_deref()).map_err(|message| ImportError::QemuImg {
            file: p.from.clone(),
            op: "info",
            message,
        })?;
    let named = p.ext.as_deref().and_then(|e| match e {
        "vmdk" => Some("vmdk"),
        "vhd" | "vpc" => Some("vpc"),
        "vhdx" => Some("vhdx"),
        "qcow2" | "qcow" => Some("qcow2"),
        "vdi" => Some("vdi"),
        _ => None,
    });
    if p.format.is_none() && info.format == "raw" {
        if let Some(n) = named {
            return Err(input(
                &p.from,
                format!(
                    "named .{} but qemu-img finds no {n} header in it (it would be read as raw bytes): \
                     damaged or not a {n} image; pass --format raw to import it as a raw disk",
                    p.ext.as_deref().unwrap_or_default()
                ),
            ));
        }
    }
    if !READABLE.contains(&info.format.as_str()) {
        return Err(input(
            &p.from,
            format!(
                "format {:?} is not imported (expected vmdk, vhd (vpc), vhdx, qcow2, raw or vdi)",
                info.format
            ),
        ));
    }
    if let (true, Some(b)) = (p.in_package, &info.backing) {
        return Err(input(
            &p.from,
            format!("refers to a backing file {b:?}: a package's disk must be whole"),
        ));
    }
    Ok(info)
}

/// Convert one disk into `dest`'s part file (hashed by the caller).
fn convert_one(
    p: &Planned,
    dest: &Path,
    target: Target,
    progress: &mut dyn Progress,
) -> Result<ImportedDisk, ImportError> {
    let info = detect(p)?;
    let part = part_of(dest);
    let _ = std::fs::remove_file(&part);
    let result = (|| {
        let total = info.virtual_size;
        progress.step(&format!("convert {}", short(&p.from)), total);
        // The manifest's digest of the disk file, on another core while
        // qemu-img reads the same bytes.
        let checker = p.check.clone().map(|(algo, want)| {
            let (path, offset, size) = match &p.src {
                Source::File(f) => {
                    let len = std::fs::metadata(f).map(|m| m.len()).unwrap_or(0);
                    (PathBuf::from(f), 0, len)
                }
                Source::Slice { file, offset, size } => (PathBuf::from(file), *offset, *size),
            };
            std::thread::spawn(move || {
                hash_range(&path, offset, size, &algo, &mut |_| {}).map(|got| (algo, got, want))
            })
        });
        let converted = qemu_img::convert(&p.src, &info.format, &part, target.as_str(), &mut |f| {
            progress.done((f * total as f64) as u64)
        });
        if let Some(c) = checker {
            let (algo, got, want) = c
                .join()
                .map_err(|_| input(&p.from, "the digest thread panicked"))?
                .map_err(|e| input(&p.from, e.to_string()))?;
            if got != want {
                return Err(mismatch(&p.from, &algo, &got, &want));
            }
        }
        converted.map_err(|message| ImportError::QemuImg {
            file: p.from.clone(),
            op: "convert",
            message,
        })?;
        let image_size = std::fs::metadata(&part).map_err(io(&part))?.len();
        Ok(ImportedDisk {
            disk: String::new(),
            from: p.from.clone(),
            source_format: info.format.clone(),
            subformat: info.subformat.clone(),
            path: dest.to_path_buf(),
            sha256: None,
            virtual_size: info.virtual_size,
            image_size,
        })
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&part);
    }
    result
}

fn short(s: &str) -> String {
    s.rsplit(['/', ':']).next().unwrap_or(s).to_string()
}

fn format_name(d: &ImportedDisk) -> String {
    let f = match d.source_format.as_str() {
        "vpc" => "vhd".to_string(),
        other => other.to_string(),
    };
    match &d.subformat {
        Some(s) => format!("{f} {s}"),
        None => f,
    }
}

/// A deorch name for an OVF network (`VM Network` → `vm-network`).
pub fn network_name(ovf: &str) -> String {
    let mut s = String::new();
    for c in ovf.chars() {
        if c.is_ascii_alphanumeric() {
            s.push(c.to_ascii_lowercase());
        } else if !s.ends_with('-') && !s.is_empty() {
            s.push('-');
        }
    }
    let s: String = s.trim_end_matches('-').chars().take(63).collect();
    let s = s.trim_end_matches('-').to_string();
    if s.is_empty() {
        "default".into()
    } else {
        s
    }
}

/// The annotation keys an import writes.
pub mod annotations {
    /// Where each disk came from and its format.
    pub const SOURCE: &str = "import.deorch.dev/source";
    /// The appliance's disks the spacesuit cannot hold (blank ones).
    pub const DISKS: &str = "import.deorch.dev/disks";
    /// What the spacesuit's NICs do not keep of the appliance's: the OVF
    /// network's own name, the card replaced, the MAC.
    pub const NICS: &str = "import.deorch.dev/nics";
}

fn manifests(req: &Request, disks: Vec<ImportedDisk>, ovf: Option<&ovf::Ovf>) -> Imported {
    // The OVF's disks with a file, in the order they were imported.
    let with_file: Vec<&ovf::Disk> = ovf
        .map(|o| o.disks.iter().filter(|d| d.file.is_some()).collect())
        .unwrap_or_default();
    let image = |d: &ImportedDisk| ImageSource {
        path: d.path.display().to_string(),
        format: Some(req.target.image_format()),
        sha256: d.sha256.clone(),
    };
    let bus = |i: usize| {
        with_file
            .get(i)
            .and_then(|o| o.bus)
            .filter(|b| *b != DiskBus::Virtio)
    };
    let mut spec = SpacesuitSpec {
        source: disks.first().map(|d| SpacesuitSource {
            image: Some(image(d)),
            virtual_machine: None,
            bus: bus(0),
        }),
        disks: disks
            .iter()
            .enumerate()
            .skip(1)
            .map(|(i, d)| SpacesuitDisk {
                name: d.disk.clone(),
                image: image(d),
                bus: bus(i),
            })
            .collect(),
        ..Default::default()
    };
    let mut notes: BTreeMap<String, String> = BTreeMap::new();
    notes.insert(
        annotations::SOURCE.into(),
        disks
            .iter()
            .map(|d| format!("{}: {} ({})", d.disk, d.from, format_name(d)))
            .collect::<Vec<_>>()
            .join("; "),
    );
    let mut vm = None;
    if let Some(o) = ovf {
        spec.description = Some(match (&o.name, &o.description) {
            (Some(n), Some(d)) => format!("{n}: {d}"),
            (Some(n), None) => n.clone(),
            (None, Some(d)) => d.clone(),
            (None, None) => format!("imported from {}", req.file.display()),
        });
        spec.cpu = o.cpus.map(|c| Cpu(c.saturating_mul(1000)));
        spec.memory = o.memory.map(Quantity);
        spec.firmware = o.firmware;
        // What the spacesuit cannot hold: a blank disk (it has no image).
        let blank: Vec<String> = o
            .disks
            .iter()
            .filter(|d| d.file.is_none())
            .map(|d| {
                format!(
                    "OVF disk {:?}: blank{}, not in the spacesuit (a VM adds it as a blank disk)",
                    d.id,
                    d.capacity
                        .map(|c| format!(" {}", Quantity(c)))
                        .unwrap_or_default()
                )
            })
            .collect();
        if !blank.is_empty() {
            notes.insert(annotations::DISKS.into(), blank.join("; "));
        }
        // Each OVF network becomes the deorch Network of the same name made
        // a DNS label (`VM Network` -> `vm-network`); the appliance's own
        // MACs are not kept (each VM made from the spacesuit derives its
        // own) and an emulated card deorch lacks becomes virtio.
        spec.nics = o
            .nics
            .iter()
            .enumerate()
            .map(|(i, n)| Nic {
                name: format!("nic{i}"),
                network: network_name(n.network.as_deref().unwrap_or("default")),
                model: (n.model != NicModel::Virtio).then_some(n.model),
                ..Default::default()
            })
            .collect();
        let nic_notes: Vec<String> = o
            .nics
            .iter()
            .zip(&spec.nics)
            .filter_map(|(n, d)| {
                let mut parts = Vec::new();
                let ovf_net = n.network.as_deref().unwrap_or("");
                if ovf_net != d.network {
                    parts.push(format!("OVF network {ovf_net:?}"));
                }
                if let Some(s) = n
                    .subtype
                    .as_ref()
                    .filter(|s| !s.eq_ignore_ascii_case(n.model.as_str()))
                {
                    parts.push(format!("was {s}"));
                }
                if let Some(m) = &n.mac {
                    parts.push(format!("mac {m} not kept"));
                }
                (!parts.is_empty()).then(|| format!("{}: {}", d.name, parts.join(", ")))
            })
            .collect();
        if !nic_notes.is_empty() {
            notes.insert(annotations::NICS.into(), nic_notes.join("; "));
        }
        let mut m = Manifest::new(
            &req.name,
            VirtualMachineSpec {
                spacesuit: Some(req.name.clone()),
                ..Default::default()
            },
        );
        m.metadata.namespace = Some(req.namespace.clone());
        vm = Some(m);
    }
    let mut m = Manifest::new(&req.name, spec);
    m.metadata.namespace = Some(req.namespace.clone());
    m.metadata.annotations = Some(notes);
    Imported {
        spacesuit: m,
        disks,
        vm,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_names() {
        assert_eq!(network_name("VM Network"), "vm-network");
        assert_eq!(network_name("  --Back_end 2--"), "back-end-2");
        assert_eq!(network_name("!!"), "default");
        assert_eq!(network_name(&"a".repeat(80)).len(), 63);
    }

    #[test]
    fn manifest_digests() {
        let d = digests("SHA256(vm.ovf)= AB12\nSHA1(disk 1.vmdk) = cd\n\n", "x.mf").unwrap();
        assert_eq!(d["vm.ovf"], ("SHA256".into(), "ab12".into()));
        assert_eq!(d["disk 1.vmdk"], ("SHA1".into(), "cd".into()));
        let e = digests("MD5(a)= 00\n", "x.mf").unwrap_err().to_string();
        assert!(e.contains("x.mf: line 1: digest MD5"), "{e}");
        let e = digests("garbage\n", "x.mf").unwrap_err().to_string();
        assert!(e.contains("expected `SHA256(FILE)= HEX`"), "{e}");
    }

    #[test]
    fn suit_names_are_labels() {
        assert_eq!(suit_name("web", 0).unwrap(), "web");
        assert_eq!(suit_name("web", 2).unwrap(), "web-disk3");
        assert!(suit_name(&"a".repeat(60), 1).is_err());
        assert!(check_name("Web").is_err());
    }
}

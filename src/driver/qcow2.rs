//! The few qcow2 files the `dir` driver makes and reads, written directly
//! instead of by a `qemu-img` process (~35 ms each, four per replica of two
//! disks): empty images, optionally backed by another qcow2 file, exactly
//! as `qemu-img create -f qcow2 [-F qcow2 -b BACKING]` lays them out
//! (version 3, 64 KiB clusters, 16-bit refcounts). The format is QEMU's
//! `docs/interop/qcow2.txt`; the tests check every file with
//! `qemu-img check` and read and write through it with `qemu-io`.
//!
//! Layout: cluster 0 the header (+ the backing-format extension and the
//! backing file name), cluster 1 the refcount table, cluster 2 its one
//! refcount block, clusters 3.. the L1 table (all zero: nothing allocated,
//! every read falls through to the backing file or reads zeros).

use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

const MAGIC: [u8; 4] = [b'Q', b'F', b'I', 0xfb];
const CLUSTER_BITS: u32 = 16;
const CLUSTER: u64 = 1 << CLUSTER_BITS;
const HEADER_LEN: usize = 104;
/// Header extension: the backing file's format.
const EXT_BACKING_FORMAT: u32 = 0xE279_2ACA;
/// Bytes of guest data one L1 entry maps (one L2 table of 8-byte entries).
const L1_SPAN: u64 = (CLUSTER / 8) * CLUSTER;
/// QEMU refuses longer backing file names.
const MAX_BACKING_NAME: usize = 1023;
/// One refcount block of 16-bit entries covers this many clusters, which
/// bounds the L1 table (and so the virtual size, to ~ 16 PiB).
const REFCOUNTS_PER_BLOCK: u64 = CLUSTER / 2;

/// What a qcow2 header says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Virtual size.
    pub size: u64,
    /// Backing file, if any.
    pub backing: Option<PathBuf>,
}

fn invalid(path: &Path, what: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("{}: {what}", path.display()),
    )
}

/// Read a qcow2 header (magic, size, backing file name).
pub fn header(path: &Path) -> std::io::Result<Header> {
    let mut f = std::fs::File::open(path)?;
    let mut h = [0u8; 32];
    f.read_exact(&mut h)?;
    if h[..4] != MAGIC {
        return Err(invalid(path, "not a qcow2 image"));
    }
    let off = u64::from_be_bytes(h[8..16].try_into().expect("8 bytes"));
    let len = u32::from_be_bytes(h[16..20].try_into().expect("4 bytes")) as usize;
    let size = u64::from_be_bytes(h[24..32].try_into().expect("8 bytes"));
    let backing = if off == 0 || len == 0 || len > 4096 {
        None
    } else {
        use std::io::Seek;
        f.seek(std::io::SeekFrom::Start(off))?;
        let mut name = vec![0u8; len];
        f.read_exact(&mut name)?;
        Some(PathBuf::from(std::ffi::OsStr::from_bytes(&name)))
    };
    Ok(Header { size, backing })
}

/// An empty qcow2 image: the bytes written at offsets 0 (header), one
/// cluster (refcount table) and two clusters (refcount block); the rest of
/// the file, up to its length, is zeros and stays sparse.
#[derive(Debug)]
pub struct Image {
    /// Header, extensions and backing file name.
    pub header: Vec<u8>,
    /// The refcount table's one entry.
    pub refcount_table: [u8; 8],
    /// The refcount block's used entries.
    pub refcount_block: Vec<u8>,
    /// File length.
    pub len: u64,
}

/// An empty qcow2 image of `size` bytes, backed by the qcow2 file
/// `backing` when given.
pub fn image(size: u64, backing: Option<&Path>) -> std::io::Result<Image> {
    let l1_size = size.div_ceil(L1_SPAN).max(1);
    let l1_clusters = (l1_size * 8).div_ceil(CLUSTER);
    let clusters = 3 + l1_clusters;
    if clusters > REFCOUNTS_PER_BLOCK || l1_size > u32::MAX as u64 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("qcow2: a virtual size of {size} bytes is too large"),
        ));
    }
    let name = backing.map(|b| b.as_os_str().as_bytes()).unwrap_or(b"");
    if name.len() > MAX_BACKING_NAME {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("qcow2: backing file name longer than {MAX_BACKING_NAME} bytes"),
        ));
    }
    // Header, then extensions (each padded to 8 bytes), then the name.
    let mut ext = Vec::new();
    if backing.is_some() {
        let fmt = b"qcow2";
        ext.extend(EXT_BACKING_FORMAT.to_be_bytes());
        ext.extend((fmt.len() as u32).to_be_bytes());
        ext.extend(fmt);
        ext.resize(ext.len().next_multiple_of(8), 0);
    }
    ext.extend([0u8; 8]); // end of extensions
    let name_offset = if name.is_empty() {
        0
    } else {
        (HEADER_LEN + ext.len()) as u64
    };
    let mut h = Vec::with_capacity(HEADER_LEN + ext.len() + name.len());
    h.extend(MAGIC);
    h.extend(3u32.to_be_bytes()); // version
    h.extend(name_offset.to_be_bytes());
    h.extend((name.len() as u32).to_be_bytes());
    h.extend(CLUSTER_BITS.to_be_bytes());
    h.extend(size.to_be_bytes());
    h.extend(0u32.to_be_bytes()); // no encryption
    h.extend((l1_size as u32).to_be_bytes());
    h.extend((3 * CLUSTER).to_be_bytes()); // L1 table
    h.extend(CLUSTER.to_be_bytes()); // refcount table
    h.extend(1u32.to_be_bytes()); // ... one cluster long
    h.extend(0u32.to_be_bytes()); // no snapshots
    h.extend(0u64.to_be_bytes());
    h.extend(0u64.to_be_bytes()); // incompatible features
    h.extend(0u64.to_be_bytes()); // compatible features
    h.extend(0u64.to_be_bytes()); // autoclear features
    h.extend(4u32.to_be_bytes()); // refcount order: 16-bit
    h.extend((HEADER_LEN as u32).to_be_bytes());
    debug_assert_eq!(h.len(), HEADER_LEN);
    h.extend(ext);
    h.extend(name);
    Ok(Image {
        header: h,
        // Its one refcount block is cluster 2...
        refcount_table: (2 * CLUSTER).to_be_bytes(),
        // ... where every cluster of the file is used once.
        refcount_block: (0..clusters).flat_map(|_| 1u16.to_be_bytes()).collect(),
        len: clusters * CLUSTER,
    })
}

/// Write an empty qcow2 image at `path` (which must not exist), durably.
/// Only the written blocks take space (~12 KiB).
pub fn create(path: &Path, size: u64, backing: Option<&Path>) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let img = image(size, backing)?;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)?;
    f.set_len(img.len)?;
    f.write_all_at(&img.header, 0)?;
    f.write_all_at(&img.refcount_table, CLUSTER)?;
    f.write_all_at(&img.refcount_block, 2 * CLUSTER)?;
    f.sync_all()
}

/// Whether some process has the image open with QEMU's image locking
/// (QEMU, qemu-img, qemu-io). QEMU holds shared byte-range locks (one byte
/// per permission, from offset 100) for as long as the image is open; an
/// exclusive lock over the whole file therefore fails exactly then. The
/// lock is dropped at once (one `fcntl` each way, where `qemu-img info`
/// costs a process); a QEMU opening the image in those microseconds would
/// fail its own lock and be retried by its reconciler.
pub fn locked(path: &Path) -> std::io::Result<bool> {
    use rustix::fs::{fcntl_lock, FlockOperation};
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)?;
    match fcntl_lock(&f, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {
            fcntl_lock(&f, FlockOperation::NonBlockingUnlock)?;
            Ok(false)
        }
        Err(e) if e == rustix::io::Errno::AGAIN || e == rustix::io::Errno::ACCESS => Ok(true),
        Err(e) => Err(e.into()),
    }
}

/// The header extension that lists an image's persistent dirty bitmaps.
const EXT_BITMAPS: u32 = 0x2385_2875;

/// True when the image carries persistent dirty bitmaps: a version 3
/// header with the bitmaps extension, still marked valid (autoclear bit
/// 0; a tool unaware of bitmaps that wrote the image cleared it). Reads
/// the first cluster only.
pub fn has_bitmaps(path: &Path) -> std::io::Result<bool> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(path)?;
    let mut h = vec![0u8; CLUSTER as usize];
    let n = f.read_at(&mut h, 0)?;
    h.truncate(n);
    if h.len() < HEADER_LEN || h[..4] != MAGIC {
        return Err(invalid(path, "not a qcow2 image"));
    }
    let u32_at = |o: usize| u32::from_be_bytes(h[o..o + 4].try_into().expect("4 bytes"));
    if u32_at(4) < 3 {
        return Ok(false);
    }
    let autoclear = u64::from_be_bytes(h[88..96].try_into().expect("8 bytes"));
    if autoclear & 1 == 0 {
        return Ok(false);
    }
    let mut at = u32_at(100) as usize;
    while at + 8 <= h.len() {
        let (kind, len) = (u32_at(at), u32_at(at + 4) as usize);
        match kind {
            0 => return Ok(false),
            EXT_BITMAPS => return Ok(true),
            _ => at += 8 + len.div_ceil(8) * 8,
        }
    }
    Ok(false)
}

/// True when the image has no data of its own (its L1 table is all zero):
/// every read falls through to its backing file.
pub fn is_empty(path: &Path) -> std::io::Result<bool> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(path)?;
    let mut h = [0u8; 64];
    f.read_exact_at(&mut h, 0)?;
    if h[..4] != MAGIC {
        return Err(invalid(path, "not a qcow2 image"));
    }
    // Internal snapshots keep data of their own (deorch makes none).
    if u32::from_be_bytes(h[60..64].try_into().expect("4 bytes")) != 0 {
        return Ok(false);
    }
    let l1_size = u32::from_be_bytes(h[36..40].try_into().expect("4 bytes")) as usize;
    let l1_offset = u64::from_be_bytes(h[40..48].try_into().expect("8 bytes"));
    if l1_size > 1 << 24 {
        return Err(invalid(path, "L1 table too large"));
    }
    let mut l1 = vec![0u8; l1_size * 8];
    f.read_exact_at(&mut l1, l1_offset)?;
    Ok(l1.iter().all(|b| *b == 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_sizes_are_bounded() {
        let dir = std::env::temp_dir().join(format!("deorch-qcow2-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let base = dir.join("base.qcow2");
        create(&base, 3 << 30, None).unwrap();
        assert_eq!(
            header(&base).unwrap(),
            Header {
                size: 3 << 30,
                backing: None
            }
        );
        let top = dir.join("top.qcow2");
        create(&top, 5 << 30, Some(&base)).unwrap();
        assert_eq!(
            header(&top).unwrap().backing.as_deref(),
            Some(base.as_path())
        );
        assert!(create(&top, 1, None).is_err(), "never overwrites");
        assert!(image(u64::MAX, None).is_err());
        assert!(image(1, Some(Path::new(&"x".repeat(2000)))).is_err());
        // 4 TiB needs one L1 cluster, 4 TiB + 1 byte two.
        assert_eq!(image(4 << 40, None).unwrap().len, 4 * CLUSTER);
        assert_eq!(image((4 << 40) + 1, None).unwrap().len, 5 * CLUSTER);
        assert!(is_empty(&top).unwrap());
        assert!(!locked(&top).unwrap());
        let _ = std::fs::remove_dir_all(&dir);
    }
}

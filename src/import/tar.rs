//! The members of a tar archive (an OVA), read in place: each member's
//! name, byte offset and size, without extracting anything. The disks
//! are then read by `qemu-img` straight out of the archive (a `raw`
//! slice at that offset), so a disk crosses the disk once.
//!
//! Reads ustar and GNU headers, with pax (`x`) and GNU (`L`) long names,
//! and checks each header's checksum: an OVA is a ustar archive (DSP0243,
//! "OVF Packages"), and a damaged one fails here with the member's offset.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// One regular file in the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Its path in the archive.
    pub name: String,
    /// Offset of its first byte in the archive file.
    pub offset: u64,
    /// Its size in bytes.
    pub size: u64,
}

const BLOCK: u64 = 512;

/// Whether `head` (the first 512 bytes of a file) is a tar header: the
/// ustar magic, or an old-style header whose checksum holds.
pub fn looks_like_tar(head: &[u8]) -> bool {
    head.len() >= BLOCK as usize
        && (&head[257..262] == b"ustar" || checksum_ok(&head[..BLOCK as usize]).unwrap_or(false))
}

/// The regular files of the archive `path`, in archive order.
pub fn members(path: &Path) -> Result<Vec<Member>, String> {
    let mut f = File::open(path).map_err(|e| e.to_string())?;
    let len = f.metadata().map_err(|e| e.to_string())?.len();
    let mut out = Vec::new();
    let mut at = 0u64;
    let mut long_name: Option<String> = None;
    let mut header = [0u8; BLOCK as usize];
    loop {
        if at + BLOCK > len {
            // No end-of-archive blocks: GNU tar accepts that, so do we,
            // but only at a member boundary.
            if at == len && !out.is_empty() {
                return Ok(out);
            }
            return Err(format!(
                "the archive ends inside a header at byte {at} (truncated?)"
            ));
        }
        f.seek(SeekFrom::Start(at)).map_err(|e| e.to_string())?;
        f.read_exact(&mut header).map_err(|e| e.to_string())?;
        if header.iter().all(|b| *b == 0) {
            return Ok(out);
        }
        if !checksum_ok(&header).unwrap_or(false) {
            return Err(format!(
                "the tar header at byte {at} has a bad checksum (not a tar archive, or damaged)"
            ));
        }
        let size = number(&header[124..136])
            .ok_or_else(|| format!("the tar header at byte {at} has an unreadable size"))?;
        let data = at + BLOCK;
        if data + size > len {
            return Err(format!(
                "member at byte {at} claims {size} bytes but the archive ends at {len} (truncated?)"
            ));
        }
        let kind = header[156];
        match kind {
            // GNU long name: the next header's name is this member's data.
            b'L' => long_name = Some(read_string(&mut f, data, size)?),
            // pax extended header: its `path` record names the next member.
            b'x' => {
                let text = read_string(&mut f, data, size)?;
                if let Some(p) = pax_path(&text) {
                    long_name = Some(p);
                }
            }
            b'0' | 0 | b'7' => {
                let name = long_name.take().unwrap_or_else(|| ustar_name(&header));
                out.push(Member {
                    name: name.trim_start_matches("./").to_string(),
                    offset: data,
                    size,
                });
            }
            // Directories, links, global pax headers: nothing to read.
            _ => long_name = None,
        }
        at = data + size.div_ceil(BLOCK) * BLOCK;
    }
}

fn read_string(f: &mut File, at: u64, size: u64) -> Result<String, String> {
    if size > 1 << 20 {
        return Err(format!("a tar name record of {size} bytes at byte {at}"));
    }
    let mut buf = vec![0u8; size as usize];
    f.seek(SeekFrom::Start(at)).map_err(|e| e.to_string())?;
    f.read_exact(&mut buf).map_err(|e| e.to_string())?;
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    Ok(String::from_utf8_lossy(&buf[..end]).into_owned())
}

/// The `path` record of a pax header (`LEN path=VALUE\n` records).
fn pax_path(text: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let (_, rec) = l.split_once(' ')?;
        rec.strip_prefix("path=").map(str::to_string)
    })
}

fn cstr(field: &[u8]) -> String {
    let end = field.iter().position(|b| *b == 0).unwrap_or(field.len());
    String::from_utf8_lossy(&field[..end]).into_owned()
}

/// `prefix/name` of a ustar header (name alone for old headers).
fn ustar_name(h: &[u8]) -> String {
    let name = cstr(&h[0..100]);
    if &h[257..262] == b"ustar" {
        let prefix = cstr(&h[345..500]);
        if !prefix.is_empty() {
            return format!("{prefix}/{name}");
        }
    }
    name
}

/// An octal field, or GNU's base-256 (high bit set) for large sizes.
fn number(field: &[u8]) -> Option<u64> {
    if field[0] & 0x80 != 0 {
        let mut n: u64 = (field[0] & 0x7f) as u64;
        for b in &field[1..] {
            n = n.checked_mul(256)?.checked_add(*b as u64)?;
        }
        return Some(n);
    }
    let s = cstr(field);
    let s = s.trim_matches(|c: char| c == ' ' || c == '\0');
    if s.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(s, 8).ok()
}

/// The header's checksum: the sum of its bytes with the checksum field
/// read as spaces (unsigned, as POSIX says; some old tars summed signed).
fn checksum_ok(h: &[u8]) -> Option<bool> {
    let want = number(&h[148..156])?;
    let unsigned: u64 = h
        .iter()
        .enumerate()
        .map(|(i, b)| {
            if (148..156).contains(&i) {
                32
            } else {
                *b as u64
            }
        })
        .sum();
    let signed: i64 = h
        .iter()
        .enumerate()
        .map(|(i, b)| {
            if (148..156).contains(&i) {
                32
            } else {
                *b as i8 as i64
            }
        })
        .sum();
    Some(want == unsigned || want as i64 == signed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(name: &str, size: u64, kind: u8) -> [u8; 512] {
        let mut h = [0u8; 512];
        h[..name.len()].copy_from_slice(name.as_bytes());
        h[100..107].copy_from_slice(b"0000644");
        h[124..135].copy_from_slice(format!("{size:011o}").as_bytes());
        h[156] = kind;
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[148..156].copy_from_slice(b"        ");
        let sum: u64 = h.iter().map(|b| *b as u64).sum();
        h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
        h
    }

    fn archive(parts: &[(&str, &[u8], u8)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, data, kind) in parts {
            out.extend_from_slice(&header(name, data.len() as u64, *kind));
            out.extend_from_slice(data);
            out.resize(out.len().div_ceil(512) * 512, 0);
        }
        out.extend_from_slice(&[0u8; 1024]);
        out
    }

    fn write(bytes: &[u8]) -> (tempdir::Dir, std::path::PathBuf) {
        let d = tempdir::Dir::new();
        let p = d.0.join("a.tar");
        std::fs::write(&p, bytes).unwrap();
        (d, p)
    }

    mod tempdir {
        pub struct Dir(pub std::path::PathBuf);
        impl Dir {
            pub fn new() -> Dir {
                use std::sync::atomic::{AtomicU32, Ordering};
                static N: AtomicU32 = AtomicU32::new(0);
                let p = std::env::temp_dir().join(format!(
                    "deorch-tar-{}-{}",
                    std::process::id(),
                    N.fetch_add(1, Ordering::Relaxed)
                ));
                std::fs::create_dir_all(&p).unwrap();
                Dir(p)
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    #[test]
    fn members_with_offsets_and_long_names() {
        let long = "d/".repeat(60) + "disk.vmdk";
        let pax = format!("{} path={long}\n", 6 + long.len() + 1 + 3);
        let bytes = archive(&[
            ("vm.ovf", b"<Envelope/>", b'0'),
            ("dir", b"", b'5'),
            ("PaxHeader", pax.as_bytes(), b'x'),
            ("short", &[7u8; 700], b'0'),
        ]);
        let (_d, p) = write(&bytes);
        let m = members(&p).unwrap();
        assert_eq!(m.len(), 2, "{m:?}");
        assert_eq!(m[0].name, "vm.ovf");
        assert_eq!((m[0].offset, m[0].size), (512, 11));
        assert_eq!(m[1].name, long);
        assert_eq!(m[1].size, 700);
        let data = &bytes[m[1].offset as usize..(m[1].offset + m[1].size) as usize];
        assert!(data.iter().all(|b| *b == 7));
    }

    #[test]
    fn damage_is_reported_with_its_offset() {
        let mut bytes = archive(&[("a", b"x", b'0'), ("b", b"y", b'0')]);
        bytes[1024 + 3] ^= 0xff;
        let (_d, p) = write(&bytes);
        let e = members(&p).unwrap_err();
        assert!(e.contains("byte 1024") && e.contains("checksum"), "{e}");
        let bytes = archive(&[("a", &[1u8; 4000], b'0')]);
        let (_d, p) = write(&bytes[..2048]);
        let e = members(&p).unwrap_err();
        assert!(e.contains("truncated"), "{e}");
    }

    #[test]
    fn base256_sizes() {
        let mut f = [0u8; 12];
        f[0] = 0x80;
        f[11] = 1;
        f[10] = 2;
        assert_eq!(number(&f), Some(513));
        assert_eq!(number(b"00000001000\0"), Some(512));
    }
}

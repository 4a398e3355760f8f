//! A minimal RFB 3.8 client: enough to show that QEMU's VNC server refuses
//! a client without the console ticket's password and lets one with it
//! through to the framebuffer description (ServerInit).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use des::cipher::generic_array::GenericArray;
use des::cipher::{BlockEncrypt, KeyInit};

/// What the server said to a VNC login.
#[derive(Debug, PartialEq, Eq)]
pub enum VncLogin {
    /// Past the security handshake: ServerInit read, with this desktop name.
    Connected {
        width: u16,
        height: u16,
        name: String,
    },
    /// The server offered no authentication at all (an unlocked console).
    NoAuthentication,
    /// Refused, with the server's reason.
    Refused(String),
}

/// VNC authentication's key: the password's first 8 bytes, zero padded,
/// each byte's bits reversed (the RFB spec's DES quirk).
fn vnc_key(password: &str) -> [u8; 8] {
    let mut key = [0u8; 8];
    for (k, b) in key.iter_mut().zip(password.bytes()) {
        *k = b.reverse_bits();
    }
    key
}

fn read_reason(s: &mut impl Read) -> String {
    let mut len = [0u8; 4];
    if s.read_exact(&mut len).is_err() {
        return "(connection closed)".into();
    }
    let mut text = vec![0u8; u32::from_be_bytes(len).min(4096) as usize];
    let _ = s.read_exact(&mut text);
    String::from_utf8_lossy(&text).into_owned()
}

/// Log in to the VNC server at `host:port` with `password` (`None`: answer
/// the challenge with a wrong one).
pub fn vnc_login(host: &str, port: u16, password: Option<&str>) -> std::io::Result<VncLogin> {
    let s = TcpStream::connect((host, port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    rfb_login(s, password)
}

/// The same RFB login over any byte stream (e.g. a websocket over TLS,
/// as a browser's noVNC speaks it).
pub fn rfb_login(mut s: impl Read + Write, password: Option<&str>) -> std::io::Result<VncLogin> {
    let mut version = [0u8; 12];
    s.read_exact(&mut version)?;
    assert_eq!(&version[..4], b"RFB ", "not an RFB server: {version:?}");
    s.write_all(b"RFB 003.008\n")?;
    let mut n = [0u8; 1];
    s.read_exact(&mut n)?;
    if n[0] == 0 {
        return Ok(VncLogin::Refused(read_reason(&mut s)));
    }
    let mut types = vec![0u8; n[0] as usize];
    s.read_exact(&mut types)?;
    if !types.contains(&2) {
        if types.contains(&1) {
            return Ok(VncLogin::NoAuthentication);
        }
        return Ok(VncLogin::Refused(format!("security types {types:?}")));
    }
    s.write_all(&[2])?;
    let mut challenge = [0u8; 16];
    s.read_exact(&mut challenge)?;
    let cipher = des::Des::new_from_slice(&vnc_key(password.unwrap_or("wrong!!!"))).unwrap();
    let mut response = [0u8; 16];
    for (out, block) in response.chunks_mut(8).zip(challenge.chunks(8)) {
        let mut b = GenericArray::clone_from_slice(block);
        cipher.encrypt_block(&mut b);
        out.copy_from_slice(&b);
    }
    s.write_all(&response)?;
    let mut result = [0u8; 4];
    s.read_exact(&mut result)?;
    if u32::from_be_bytes(result) != 0 {
        return Ok(VncLogin::Refused(read_reason(&mut s)));
    }
    // ClientInit (shared), then ServerInit: size, pixel format, name.
    s.write_all(&[1])?;
    let mut init = [0u8; 24];
    s.read_exact(&mut init)?;
    let name_len = u32::from_be_bytes(init[20..24].try_into().unwrap()).min(4096) as usize;
    let mut name = vec![0u8; name_len];
    s.read_exact(&mut name)?;
    Ok(VncLogin::Connected {
        width: u16::from_be_bytes([init[0], init[1]]),
        height: u16::from_be_bytes([init[2], init[3]]),
        name: String::from_utf8_lossy(&name).into_owned(),
    })
}

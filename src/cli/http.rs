//! Client commands of the HTTP API: `deorch login`, `whoami`, `push`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::{json, Value};

use crate::http::client::{request, NodeUrl, Reply};
use crate::http::COOKIE_NAME;
use crate::identity::signed::SIGNATURE_ANNOTATION;
use crate::identity::{self, AddressType, PrivateKey};
use crate::manifest;

const TIMEOUT: Duration = Duration::from_secs(30);

/// Where the session cookie for `node` is kept: `$XDG_RUNTIME_DIR/deorch/`
/// or else `~/.cache/deorch/`, one file per node, mode 0600.
pub fn session_file(node: &NodeUrl) -> PathBuf {
    let dir = match std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        Some(d) => PathBuf::from(d).join("deorch"),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into()))
            .join(".cache/deorch"),
    };
    let name: String = node
        .authority
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    dir.join(format!("session-{name}"))
}

fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        if !dir.exists() {
            std::fs::create_dir_all(dir)?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        }
    }
    crate::state_file::write_with(path, text.as_bytes(), crate::state_file::Options::private())
        .with_context(|| format!("writing {}", path.display()))
}

fn load_key(path: &Path) -> anyhow::Result<PrivateKey> {
    PrivateKey::load(path).with_context(|| format!("reading key {}", path.display()))
}

/// The `"error"` of a JSON refusal, or the raw status.
pub(crate) fn refusal(r: &Reply) -> String {
    let v = r.json();
    match v.get("error").and_then(Value::as_str) {
        Some(e) => format!(
            "{} ({}): {e}",
            r.status,
            v.get("code").and_then(Value::as_str).unwrap_or("?")
        ),
        None => format!(
            "HTTP {}: {}",
            r.status,
            String::from_utf8_lossy(&r.body)
                .chars()
                .take(200)
                .collect::<String>()
        ),
    }
}

/// The session token in a `Set-Cookie` header.
fn cookie_of(r: &Reply) -> Option<String> {
    r.headers
        .iter()
        .filter(|(n, _)| n == "set-cookie")
        .filter_map(|(_, v)| v.split(';').next())
        .filter_map(|c| c.trim().split_once('='))
        .find(|(n, _)| *n == COOKIE_NAME)
        .map(|(_, v)| v.to_string())
}

/// One login round trip (challenge, sign, login): returns (address, token).
pub fn login_once(
    node: &NodeUrl,
    key: &PrivateKey,
    kind: AddressType,
) -> anyhow::Result<(String, String)> {
    login_with(node, key, kind, None)
}

/// [`login_once`] with a level-2 directory password, for an address a
/// policy asks one of.
pub fn login_with(
    node: &NodeUrl,
    key: &PrivateKey,
    kind: AddressType,
    password: Option<&str>,
) -> anyhow::Result<(String, String)> {
    let r = request(node, "GET", "/v1/auth/challenge", None, None, b"", TIMEOUT)?;
    if r.status != 200 {
        bail!("challenge refused: {}", refusal(&r));
    }
    let challenge = r
        .json()
        .get("challenge")
        .and_then(Value::as_str)
        .map(str::to_string)
        .context("the node's challenge answer has no \"challenge\"")?;
    let address = key.address(kind)?.to_string();
    let signature = identity::sign(key, challenge.as_bytes(), kind)?;
    let mut body = json!({ "address": address, "signature": signature, "challenge": challenge });
    if let Some(p) = password {
        body["password"] = json!(p);
    }
    let r = request(
        node,
        "POST",
        "/v1/auth/login",
        Some("application/json"),
        None,
        body.to_string().as_bytes(),
        TIMEOUT,
    )?;
    if r.status != 200 {
        bail!("login refused: {}", refusal(&r));
    }
    let token = cookie_of(&r).context("the node set no session cookie")?;
    Ok((address, token))
}

/// `GET /v1/auth/whoami` with a token: the address, or the refusal.
pub fn whoami_once(node: &NodeUrl, token: &str) -> anyhow::Result<String> {
    let cookie = format!("{COOKIE_NAME}={token}");
    let r = request(
        node,
        "GET",
        "/v1/auth/whoami",
        None,
        Some(&cookie),
        b"",
        TIMEOUT,
    )?;
    if r.status != 200 {
        bail!("session refused: {}", refusal(&r));
    }
    r.json()
        .get("address")
        .and_then(Value::as_str)
        .map(str::to_string)
        .context("whoami answer has no address")
}

/// `deorch login`.
pub fn login(
    node: &str,
    key: &Path,
    kind: AddressType,
    password_file: Option<&Path>,
) -> anyhow::Result<ExitCode> {
    let node = NodeUrl::parse(node)?;
    let key = load_key(key)?;
    // The password's first line, from a file or standard input (`-`):
    // never an argument, which other users can read in the process list.
    let password = match password_file {
        None => None,
        Some(p) => {
            let text = if p == Path::new("-") {
                let mut t = String::new();
                std::io::Read::read_to_string(&mut std::io::stdin(), &mut t)
                    .context("reading the password from standard input")?;
                t
            } else {
                std::fs::read_to_string(p)
                    .with_context(|| format!("reading the password file {}", p.display()))?
            };
            Some(text.lines().next().unwrap_or_default().to_string())
        }
    };
    let (address, token) = login_with(&node, &key, kind, password.as_deref())?;
    let file = session_file(&node);
    write_private(&file, &format!("{token}\n"))?;
    println!("{address}");
    eprintln!(
        "logged in to {}; session in {}",
        node.base(),
        file.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// `deorch whoami`: check the stored session with the node.
pub fn whoami(node: &str) -> anyhow::Result<ExitCode> {
    let node = NodeUrl::parse(node)?;
    let file = session_file(&node);
    let token = std::fs::read_to_string(&file).with_context(|| {
        format!(
            "no session for {} ({}): deorch login",
            node.base(),
            file.display()
        )
    })?;
    println!("{}", whoami_once(&node, token.trim())?);
    Ok(ExitCode::SUCCESS)
}

/// `deorch push`: sign the documents that are not signed yet (generation 1
/// when absent, re-signed once with the node's expected generation), post
/// them, print what was applied.
pub fn push(
    node: &str,
    key: &Path,
    file: &Path,
    cluster: Option<String>,
    kind: AddressType,
) -> anyhow::Result<ExitCode> {
    let node = NodeUrl::parse(node)?;
    let parsed = manifest::parse_file(file);
    if !parsed.diagnostics.is_empty() {
        for d in &parsed.diagnostics {
            println!("{d}");
        }
        bail!("{} is invalid; nothing pushed", file.display());
    }
    let cluster = match cluster {
        Some(c) => c,
        None => {
            let r = request(&node, "GET", "/v1/cluster", None, None, b"", TIMEOUT)?;
            if r.status != 200 {
                bail!("cluster id: {}", refusal(&r));
            }
            r.json()
                .get("cluster")
                .and_then(Value::as_str)
                .map(str::to_string)
                .context("the node did not say its cluster")?
        }
    };
    let key = load_key(key)?;
    // (document, signed by us without a given generation)
    let mut docs: Vec<(Value, bool)> = Vec::new();
    for doc in &parsed.documents {
        let mut v = doc.object.to_value();
        let signed = v
            .pointer("/metadata/annotations")
            .and_then(|a| a.get(SIGNATURE_ANNOTATION))
            .is_some();
        if signed {
            docs.push((v, false));
            continue;
        }
        let auto = v.pointer("/metadata/generation").is_none();
        if auto {
            if let Some(meta) = v.get_mut("metadata").and_then(Value::as_object_mut) {
                meta.insert("generation".into(), json!(1));
            }
        }
        docs.push((identity::sign_manifest(&v, &cluster, &key, kind)?, auto));
    }
    let mut retried = false;
    loop {
        let body = docs
            .iter()
            .map(|(v, _)| serde_saphyr::to_string(v).map_err(|e| anyhow::anyhow!("{e}")))
            .collect::<anyhow::Result<Vec<_>>>()?
            .join("---\n");
        let r = request(
            &node,
            "POST",
            "/v1/manifests",
            Some("application/yaml"),
            None,
            body.as_bytes(),
            TIMEOUT,
        )?;
        let v = r.json();
        if r.status == 200 {
            for a in v["applied"].as_array().into_iter().flatten() {
                let what = if a["changed"] == true {
                    "configured"
                } else {
                    "unchanged"
                };
                println!(
                    "{} {what} (generation {})",
                    a["object"].as_str().unwrap_or("?"),
                    a["generation"]
                );
            }
            return Ok(ExitCode::SUCCESS);
        }
        let refused: Vec<Value> = v["refused"].as_array().cloned().unwrap_or_default();
        // Documents we signed with a guessed generation: re-sign once with
        // the generation the node expects.
        let fixable = r.status == 409
            && !retried
            && !refused.is_empty()
            && refused.iter().all(|x| {
                x["detail"]["expected"].is_i64()
                    && x["document"]
                        .as_u64()
                        .and_then(|d| docs.get(d as usize - 1))
                        .is_some_and(|(_, auto)| *auto)
            });
        if fixable {
            retried = true;
            for x in &refused {
                let i = x["document"].as_u64().unwrap_or(1) as usize - 1;
                let g = x["detail"]["expected"].as_i64().unwrap_or(1);
                let mut doc = docs[i].0.clone();
                if let Some(meta) = doc.get_mut("metadata").and_then(Value::as_object_mut) {
                    meta.insert("generation".into(), json!(g));
                }
                docs[i].0 = identity::sign_manifest(&doc, &cluster, &key, kind)?;
            }
            continue;
        }
        eprintln!("refused: {}", refusal(&r));
        for x in &refused {
            eprintln!(
                "  document {} {}: {}: {}",
                x["document"],
                x["object"].as_str().unwrap_or("?"),
                x["code"].as_str().unwrap_or("?"),
                x["reason"].as_str().unwrap_or("?")
            );
        }
        for d in v["diagnostics"].as_array().into_iter().flatten() {
            eprintln!("  {d}");
        }
        return Ok(ExitCode::FAILURE);
    }
}

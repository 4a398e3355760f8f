//! What the browser tests share (tests/web_ui.rs, tests/web_console.rs):
//! Debian's chromium, node and tests/web/setup.sh's npm packages, and the
//! runner of a `tests/web/*.mjs` script.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Debian's chromium.
pub const CHROMIUM: &str = "/usr/bin/chromium";

pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

pub fn cache_dir() -> PathBuf {
    match std::env::var_os("DEORCH_CACHE") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into()))
            .join(".cache/deorch"),
    }
}

/// Skip (false) with a message that is seen, or fail under `CI`.
pub fn missing(what: &str) -> bool {
    assert!(
        std::env::var("CI").is_err(),
        "{what} and CI is set: failing (scripts/test.sh installs it)"
    );
    // The real stderr: libtest captures eprintln! of passing tests.
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "\n!!!!!! SKIPPED: {what} !!!!!!\n");
    false
}

pub fn node_works() -> bool {
    Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// chromium, node and the npm packages (installed now if missing), or
/// false when the test must skip.
pub fn browser_tools() -> bool {
    if !Path::new(CHROMIUM).exists() {
        return missing(&format!(
            "{CHROMIUM} is missing (apt-get install --no-install-recommends chromium fonts-dejavu-core)"
        ));
    }
    if !node_works() {
        return missing("node is missing (apt-get install nodejs npm)");
    }
    let web = cache_dir().join("web/node_modules");
    let present = || {
        web.join("playwright-core/package.json").is_file()
            && web.join("axe-core/axe.min.js").is_file()
    };
    let out = Command::new("sh")
        .arg(repo().join("tests/web/setup.sh"))
        .output()
        .expect("run sh");
    if !out.status.success() || !present() {
        return missing(&format!(
            "tests/web/setup.sh could not install playwright-core and axe-core: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    true
}

/// Run `node tests/web/SCRIPT` with lib.mjs's variables and `vars`, its
/// output in `dir`; its stdout, or a panic with all it said (and where
/// the screenshot of the failure is kept) when it fails or outlives
/// `limit`.
pub fn run_script(script: &str, dir: &Path, vars: &[(&str, OsString)], limit: Duration) -> String {
    run_script_wrapped(&[], script, dir, vars, limit)
}

/// [`run_script`], `node` run by the command `wrap` (e.g. `ip netns exec
/// NS`: the browser on a machine of its own).
pub fn run_script_wrapped(
    wrap: &[&str],
    script: &str,
    dir: &Path,
    vars: &[(&str, OsString)],
    limit: Duration,
) -> String {
    let failshot = dir.join(format!("{script}-failure.png"));
    let (log, err) = (
        dir.join(format!("{script}.log")),
        dir.join(format!("{script}.err")),
    );
    let started = Instant::now();
    let mut cmd = match wrap.split_first() {
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg("node");
            c
        }
        None => Command::new("node"),
    };
    let mut child = cmd
        .arg(repo().join("tests/web").join(script))
        .env("DEORCH_WEB_DIR", cache_dir().join("web"))
        .env("DEORCH_FAILSHOT", &failshot)
        .envs(vars.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("run node tests/web/{script}: {e}"));
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stdout = std::fs::read_to_string(&log).unwrap_or_default();
    let stderr = std::fs::read_to_string(&err).unwrap_or_default();
    let kept = std::env::temp_dir().join(format!("deorch-web-{script}-failure.png"));
    if status.is_none_or(|s| !s.success()) {
        // The node's directory goes with it: keep the screenshot.
        let _ = std::fs::copy(&failshot, &kept);
    }
    match status {
        None => panic!(
            "{script} took over {limit:?}; so far:\n{stdout}{stderr}\n(screenshot: {})",
            kept.display()
        ),
        Some(s) => assert!(
            s.success(),
            "{script} failed ({s}):\n{stdout}{stderr}\n(screenshot: {})",
            kept.display()
        ),
    }
    eprintln!("{stdout}{script}: {:?}", started.elapsed());
    stdout
}

/// The committed bundle is what its build script (`SCRIPT --check`, from
/// the repository) makes from its entry and pinned packages: esbuild's
/// output is deterministic.
pub fn assert_bundle_fresh(script: &str) {
    if !node_works() {
        missing("node is missing (apt-get install nodejs npm)");
        return;
    }
    let out = Command::new("sh")
        .arg(repo().join(script))
        .arg("--check")
        .output()
        .expect("run sh");
    assert!(
        out.status.success(),
        "{script} --check: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

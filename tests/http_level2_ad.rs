//! Level 2 at login through a real node's HTTP API, with Active Directory
//! last: the policy's servers are three real slapd that each fail a
//! different way (stopped; up but without the user; holding the user
//! with another password) and then a real Samba AD DC, where the user
//! logs in by UPN (`usernames` maps the address to `alice`, the DC's
//! entry makes it `alice@DEORCH.TEST`) over LDAPS with the domain's CA.
//! No password: asked for; wrong: refused, each server's reason in the
//! node's log and never a password; right: accepted by the DC, fourth.
//!
//! The DC listens inside a network namespace the fixture creates
//! (tests/common/samba.rs). Everything else starts there too, from a
//! thread that joined it: the slapds on the namespace's loopback, the
//! node process (a child inherits its spawning thread's namespace), and
//! this test's HTTP client. So only loopback and the namespace's own
//! address are used, and nothing reaches outside it.
//!
//! Needs root, slapd and samba (see identity_ad.rs): skips loudly
//! without them, fails when `CI=true`. 4.2-4.9 s here on an idle machine,
//! nearly all of it provisioning the domain; `--no-capture` prints the
//! times.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::samba::{samba_available, SambaDc, DC, PASSWORD, REALM};
use common::slapd::{directory_server, slapd_available, start};
use deorch::http::client::{request, NodeUrl};
use deorch::identity::{AddressType, Network, PrivateKey};
use deorch::model::access::DirectoryServer;
use serde_json::json;

/// alice's password on the third slapd: not hers in the domain.
const OTHER_PASSWORD: &str = "Al1ce-old-Horse";
const WRONG_PASSWORD: &str = "Al1ce-wrong-Horse";

fn ad_server(ca: &Path) -> DirectoryServer {
    DirectoryServer {
        uri: format!("ldaps://{DC}"),
        user_principal_name: Some(format!("{{user}}@{REALM}")),
        ca_file: Some(ca.display().to_string()),
        timeout: Some(deorch::model::Duration(Duration::from_secs(5))),
        ..Default::default()
    }
}

/// `text` without its ANSI colour sequences (the node colours its log's
/// field names even into a file).
fn plain(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // ESC [ parameters, ended by a letter.
            chars.by_ref().find(char::is_ascii_alphabetic);
        } else {
            out.push(c);
        }
    }
    out
}

/// The node's log from byte `from` on, without colours, once it holds
/// `until` (another process writes it: wait, bounded).
fn log_from(log: &Path, from: usize, until: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(log).unwrap();
        let new = plain(text.get(from..).unwrap_or_default());
        if new.contains(until) {
            return new;
        }
        assert!(
            Instant::now() < deadline,
            "the node's log has no {until:?} after byte {from}:\n{new}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The log's "did not accept" line naming `uri`, if any.
fn refusal<'a>(log: &'a str, uri: &str) -> Option<&'a str> {
    log.lines().find(|l| {
        l.contains("level 2: directory server did not accept")
            && l.contains(&format!("server={uri} "))
    })
}

#[test]
fn login_over_http_fails_over_three_slapd_to_a_samba_ad_dc() {
    // Both checks first: under CI=true either missing fails.
    let (slapd, samba) = (slapd_available(), samba_available());
    if !(slapd && samba) {
        return;
    }
    let t = Instant::now();
    let dc = SambaDc::start();
    let ca = dc.ca_file();
    eprintln!(
        "Samba AD DC: provision + user {:?}, start {:?}",
        dc.provisioned, dc.started
    );

    dc.run(|| {
        // Three real slapd on the namespace's loopback, each failing
        // alice a different way.
        let mut stopped = start("ad-stopped", &[("alice", PASSWORD)]);
        stopped.stop();
        let no_user = start("ad-no-user", &[("bob", PASSWORD)]);
        let other = start("ad-other-password", &[("alice", OTHER_PASSWORD)]);
        let servers = [
            directory_server(stopped.port),
            directory_server(no_user.port),
            directory_server(other.port),
            ad_server(&ca),
        ];
        let uris: Vec<&str> = servers.iter().map(|s| s.uri.as_str()).collect();

        let owner = PrivateKey::generate(Network::Mainnet);
        let owner_addr = owner.address(AddressType::P2wpkh).unwrap().to_string();
        let user = PrivateKey::generate(Network::Mainnet);
        let user_addr = user.address(AddressType::P2wpkh).unwrap().to_string();
        let node = common::node_with_http("http-level2-ad", &owner_addr, &[]);
        let url = NodeUrl::parse(&node.http_url()).unwrap();
        common::push_owner_signed(
            &url,
            &owner,
            &common::level2_policy(&user_addr, &servers, "alice"),
        );
        let login = |password| common::login(&url, &user, password);
        let log_len = || std::fs::metadata(&node.log).unwrap().len() as usize;

        // No password: asked for one, no session, no server asked.
        let from = log_len();
        let r = login(None);
        assert_eq!(
            (r.status, r.json()["code"].clone()),
            (401, json!("PasswordRequired"))
        );
        assert!(r.header("set-cookie").is_none());
        let log = log_from(&node.log, from, "level-2 password required");
        assert!(
            !log.contains("did not accept"),
            "a server was asked:\n{log}"
        );

        // Wrong: every server says no, each for its own reason.
        let from = log_len();
        let t_wrong = Instant::now();
        let r = login(Some(WRONG_PASSWORD));
        let wrong_took = t_wrong.elapsed();
        assert_eq!(
            (r.status, r.json()["code"].clone()),
            (401, json!("Level2Refused")),
            "{}",
            String::from_utf8_lossy(&r.body)
        );
        assert!(r.header("set-cookie").is_none());
        let log = log_from(&node.log, from, "login refused: level 2");
        let reason = |uri: &str| {
            refusal(&log, uri).unwrap_or_else(|| panic!("no refusal by {uri} logged:\n{log}"))
        };
        assert!(reason(uris[0]).contains("connect"), "{}", reason(uris[0]));
        for uri in &uris[1..] {
            // invalidCredentials: slapd for an unknown user and for a
            // wrong password alike, AD for a wrong password.
            assert!(reason(uri).contains("rc=49"), "{}", reason(uri));
        }
        assert!(log.contains("tried=4"), "{log}");

        // Right: the three slapd fail as before, the DC accepts.
        let from = log_len();
        let t_right = Instant::now();
        let r = login(Some(PASSWORD));
        let right_took = t_right.elapsed();
        assert_eq!(
            r.status,
            200,
            "{}\nthe DC's output:\n{}",
            String::from_utf8_lossy(&r.body),
            dc.log_tail()
        );
        assert_eq!(r.json()["level2"], true);
        let log = log_from(&node.log, from, "level 2 passed");
        let passed = log.lines().find(|l| l.contains("level 2 passed")).unwrap();
        assert!(
            passed.contains(&format!("server={} ", uris[3])) && passed.contains("tried=4"),
            "not accepted by the DC, fourth: {passed}"
        );
        for uri in &uris[..3] {
            assert!(
                refusal(&log, uri).is_some(),
                "{uri} not tried first:\n{log}"
            );
        }
        assert!(refusal(&log, uris[3]).is_none(), "the DC refused:\n{log}");

        // The session carries level 2: an operator's action passes.
        let cookie = r
            .header("set-cookie")
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_string();
        let r = request(
            &url,
            "POST",
            "/v1/manifests",
            Some("application/yaml"),
            Some(&cookie),
            common::vm_yaml("l2-ad", "64Mi").as_bytes(),
            Duration::from_secs(10),
        )
        .unwrap();
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));

        // No password, wrong, right or the slapd's other one, in the log.
        let log = std::fs::read_to_string(&node.log).unwrap();
        for p in [PASSWORD, WRONG_PASSWORD, OTHER_PASSWORD] {
            assert!(!log.contains(p), "a password reached the node's log");
        }
        eprintln!(
            "level-2 login over HTTP: refused by all four in {wrong_took:?}, \
             accepted by the Samba DC (4th) in {right_took:?}"
        );
        drop(node);
        drop((no_user, other, stopped));
    });
    eprintln!("whole test: {:?}", t.elapsed());
    drop(dc);
}

//! Level 2 against a real Active Directory domain controller: Samba,
//! provisioned by this test and run in a network namespace it creates
//! (the fixture: tests/common/samba.rs). The client side, deorch's real
//! `check_password`, runs on a thread that joined the namespace, so no
//! address outside it is used.
//!
//! AD refuses simple binds without TLS ("strong auth required", checked
//! below), so logins go over LDAPS and StartTLS, trusting the domain's own
//! CA through the server entry's `caFile`.
//!
//! Needs root (namespaces) and samba, samba-ad-provision, openssl and
//! iproute2: skips loudly without them, fails when `CI=true`
//! (scripts/test.sh installs them). Provision + start take 11-20 s here;
//! `--no-capture` prints them and the login times.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::samba::{samba_available, SambaDc, DC, PASSWORD, REALM};
use deorch::identity::level2::{check_password, Attempt, Level2Error};
use deorch::model::access::DirectoryServer;

fn server(uri: &str, ca_file: Option<&Path>) -> DirectoryServer {
    DirectoryServer {
        uri: uri.into(),
        user_principal_name: Some(format!("{{user}}@{REALM}")),
        start_tls: uri.starts_with("ldap://") && ca_file.is_some(),
        ca_file: ca_file.map(|p| p.display().to_string()),
        timeout: Some(deorch::model::Duration(Duration::from_secs(5))),
        ..Default::default()
    }
}

fn no_password_in(attempts: &[Attempt]) {
    for a in attempts {
        if let Some(f) = &a.failure {
            assert!(!f.contains(PASSWORD), "password leaked into {f}");
        }
    }
}

fn p50(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[test]
fn samba_ad_dc_accepts_a_upn_login_over_tls_with_failover() {
    if !samba_available() {
        return;
    }
    let dc = SambaDc::start();
    println!(
        "Samba AD DC: provision + user {:?}, start {:?}",
        dc.provisioned, dc.started
    );

    let ca = dc.ca_file();
    let ldaps = server(&format!("ldaps://{DC}"), Some(&ca));
    let starttls = server(&format!("ldap://{DC}"), Some(&ca));
    let plain = server(&format!("ldap://{DC}"), None);
    let untrusted = server(&format!("ldaps://{DC}"), None);
    // Nothing listens on port 1 inside the namespace: connection refused.
    let refused = server(&format!("ldaps://{DC}:1"), Some(&ca));

    let outcome = dc.run(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            // The UPN login over LDAPS, and over StartTLS.
            let (r, a) = check_password(std::slice::from_ref(&ldaps), "alice", PASSWORD).await;
            assert_eq!(r, Ok(0), "LDAPS UPN login: {a:?}");
            let (r, a) = check_password(std::slice::from_ref(&starttls), "alice", PASSWORD).await;
            assert_eq!(r, Ok(0), "StartTLS UPN login: {a:?}");

            // Wrong password: the DC answers invalidCredentials (49) on both.
            let both = [ldaps.clone(), starttls.clone()];
            let (r, a) = check_password(&both, "alice", "Al1ce-wrong-Horse").await;
            assert_eq!(r, Err(Level2Error::Refused), "{a:?}");
            assert_eq!(a.len(), 2);
            for x in &a {
                let f = x.failure.as_deref().unwrap();
                assert!(f.contains("rc=49"), "not invalidCredentials: {f}");
            }
            // Empty password: refused before any server is asked.
            let (r, a) = check_password(&both, "alice", "").await;
            assert_eq!(r, Err(Level2Error::EmptyPassword));
            assert!(a.is_empty());
            // Unknown user.
            let (r, a) = check_password(&both, "mallory", PASSWORD).await;
            assert_eq!(r, Err(Level2Error::Refused), "{a:?}");
            no_password_in(&a);

            // AD's default: no simple bind without TLS (strongerAuthRequired, 8).
            let (r, a) = check_password(std::slice::from_ref(&plain), "alice", PASSWORD).await;
            assert_eq!(r, Err(Level2Error::Refused), "{a:?}");
            let f = a[0].failure.as_deref().unwrap();
            assert!(f.contains("rc=8"), "not strongerAuthRequired: {f}");
            // Without caFile the DC's certificate is not trusted.
            let (r, a) = check_password(std::slice::from_ref(&untrusted), "alice", PASSWORD).await;
            assert_eq!(r, Err(Level2Error::Refused), "{a:?}");
            let f = a[0].failure.as_deref().unwrap();
            assert!(
                f.to_lowercase().contains("certificate"),
                "not a TLS failure: {f}"
            );

            // Failover: the first server refuses connections, the DC accepts.
            let list = [refused.clone(), ldaps.clone()];
            let t = Instant::now();
            let (r, a) = check_password(&list, "alice", PASSWORD).await;
            let failover = t.elapsed();
            assert_eq!(r, Ok(1), "{a:?}");
            let f = a[0].failure.as_deref().unwrap();
            assert!(f.starts_with("connect"), "first server: {f}");
            no_password_in(&a);
            // And a wrong password through the same list is refused.
            let (r, _) = check_password(&list, "alice", "Al1ce-wrong-Horse").await;
            assert_eq!(r, Err(Level2Error::Refused));

            // Timings: 20 logins each, straight and via failover.
            let mut direct = Vec::new();
            let mut via = Vec::new();
            for _ in 0..20 {
                let t = Instant::now();
                let (r, _) = check_password(std::slice::from_ref(&ldaps), "alice", PASSWORD).await;
                direct.push(t.elapsed());
                assert_eq!(r, Ok(0));
                let t = Instant::now();
                let (r, _) = check_password(&list, "alice", PASSWORD).await;
                via.push(t.elapsed());
                assert_eq!(r, Ok(1));
            }
            (failover, p50(direct), p50(via))
        })
    });
    let (failover, direct, via) = outcome;
    println!(
        "Samba AD level-2 UPN login over LDAPS: p50 {direct:?} (20 logins); \
         after a refused first server: p50 {via:?} (first {failover:?})"
    );
    drop(dc);
}

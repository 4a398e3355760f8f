//! Level 2 against four real slapd instances (recipe: ../shared/recipes/slapd.md):
//! the first refuses connections, the second is stopped mid-test, the third
//! does not know the user, the fourth accepts → the check succeeds via the
//! fourth; a wrong password everywhere is refused. Skips loudly without
//! slapd, fails with `CI=true`.

mod common;

use std::time::{Duration, Instant};

use common::slapd::{free_port, slapd_available, start};

use deorch::identity::level2::{check_password, Level2Error};
use deorch::model::access::DirectoryServer;

const PASSWORD: &str = "correct horse battery staple";

fn server(port: u16) -> DirectoryServer {
    DirectoryServer {
        uri: format!("ldap://127.0.0.1:{port}"),
        bind_dn: Some("uid={user},ou=people,dc=example,dc=org".into()),
        timeout: Some(deorch::model::Duration(Duration::from_millis(500))),
        ..Default::default()
    }
}

#[tokio::test]
async fn failover_to_the_fourth_server_and_refusal_everywhere() {
    if !slapd_available() {
        return;
    }
    let refused_port = free_port(); // nothing listens there
    let mut second = start("second", &[("alice", PASSWORD)]);
    let third = start("third", &[("bob", PASSWORD)]);
    let fourth = start("fourth", &[("alice", PASSWORD)]);
    let servers = [
        server(refused_port),
        server(second.port),
        server(third.port),
        server(fourth.port),
    ];

    // The second server is up and would accept alice…
    let (r, _) = check_password(&servers[1..2], "alice", PASSWORD).await;
    assert_eq!(r, Ok(0), "second server accepts before it is stopped");
    // …then it is stopped mid-test.
    second.child.kill().unwrap();
    second.child.wait().unwrap();

    let t = Instant::now();
    let (r, attempts) = check_password(&servers, "alice", PASSWORD).await;
    let elapsed = t.elapsed();
    assert_eq!(r, Ok(3), "accepted by the fourth: {attempts:?}");
    assert_eq!(attempts.len(), 4);
    assert!(
        attempts[..3].iter().all(|a| a.failure.is_some()),
        "{attempts:?}"
    );
    for a in &attempts {
        if let Some(f) = &a.failure {
            assert!(!f.contains(PASSWORD), "password leaked into {f}");
        }
    }
    println!("level-2 login via the fourth server after three failures: {elapsed:?}");

    // Wrong password everywhere: refused, and the error names no server.
    let (r, attempts) = check_password(&servers, "alice", "wrong").await;
    assert_eq!(r, Err(Level2Error::Refused));
    assert_eq!(attempts.len(), 4);
    assert!(!Level2Error::Refused.to_string().contains("127.0.0.1"));
    // Unknown user everywhere.
    let (r, _) = check_password(&servers, "mallory", PASSWORD).await;
    assert_eq!(r, Err(Level2Error::Refused));
    // DN injection does not bind as someone else.
    let (r, _) = check_password(&servers[2..], "bob,ou=people", PASSWORD).await;
    assert_eq!(r, Err(Level2Error::Refused));
    // The third knows bob: sanity check that it answers binds at all.
    let (r, _) = check_password(&servers[2..3], "bob", PASSWORD).await;
    assert_eq!(r, Ok(0));
    drop((third, fourth));
}

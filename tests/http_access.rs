//! Sessions gate every HTTP verb: a table over verbs × roles × namespaces
//! against a real node (fake drivers), the expected answer computed from
//! the roles' documented meaning, each request made with the user's own
//! session cookie.

mod common;

use std::time::Duration;

use deorch::http::client::{request, NodeUrl, Reply};
use deorch::identity::{AddressType, Network, PrivateKey};
use serde_json::Value;

const T: Duration = Duration::from_secs(10);
const NAMESPACES: [&str; 2] = ["team", "other"];

#[derive(Debug, Clone, Copy, PartialEq)]
enum Role {
    Owner,
    Admin,
    /// `operator` limited to namespace `team`.
    TeamOperator,
    Viewer,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Verb {
    Get,
    List,
    Apply,
    Delete,
    Console,
}

/// What the docs say each role may do (docs/SIGNING.md, identity::access).
fn allowed(role: Role, verb: Verb, ns: &str) -> bool {
    match role {
        Role::Owner | Role::Admin => true,
        Role::TeamOperator => ns == "team",
        Role::Viewer => matches!(verb, Verb::Get | Verb::List),
    }
}

fn vm(name: &str, ns: &str) -> String {
    format!(
        "apiVersion: deorch.dev/v1alpha1\nkind: VirtualMachine\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  cpu: 1\n  memory: 64Mi\n"
    )
}

fn call(url: &NodeUrl, method: &str, path: &str, cookie: &str, body: &[u8]) -> Reply {
    request(
        url,
        method,
        path,
        Some("application/yaml"),
        Some(cookie),
        body,
        T,
    )
    .unwrap()
}

#[test]
fn every_verb_checks_the_sessions_policy() {
    let owner = PrivateKey::generate(Network::Mainnet);
    let owner_addr = owner.address(AddressType::P2wpkh).unwrap().to_string();
    let node = common::node_with_http("http-access", &owner_addr, &[]);
    let url = NodeUrl::parse(&node.http_url()).unwrap();

    let users: Vec<(Role, PrivateKey)> =
        [Role::Owner, Role::Admin, Role::TeamOperator, Role::Viewer]
            .into_iter()
            .map(|r| {
                let k = if r == Role::Owner {
                    owner.clone()
                } else {
                    PrivateKey::generate(Network::Mainnet)
                };
                (r, k)
            })
            .collect();
    let addr = |k: &PrivateKey| k.address(AddressType::P2wpkh).unwrap().to_string();
    let policy = format!(
        "apiVersion: deorch.dev/v1alpha1\nkind: AccessPolicy\nmetadata:\n  name: people\n  generation: 1\nspec:\n  rules:\n    - subjects: [\"{}\"]\n      role: admin\n    - subjects: [\"{}\"]\n      role: operator\n      namespaces: [team]\n    - subjects: [\"{}\"]\n      role: viewer\n",
        addr(&users[1].1),
        addr(&users[2].1),
        addr(&users[3].1),
    );
    common::push_owner_signed(&url, &owner, &policy);

    let cookies: Vec<(Role, String)> = users
        .iter()
        .map(|(role, k)| {
            let (_, token) = deorch::cli::http::login_once(&url, k, AddressType::P2wpkh).unwrap();
            (*role, format!("deorch_session={token}"))
        })
        .collect();
    let owner_cookie = &cookies[0].1;
    // The owner's session seeds one VM per namespace and user to delete.
    for ns in NAMESPACES {
        for (role, _) in &cookies {
            let r = call(
                &url,
                "POST",
                "/v1/manifests",
                owner_cookie,
                vm(&format!("seed-{role:?}").to_lowercase(), ns).as_bytes(),
            );
            assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        }
    }

    // Without a session nothing is answered.
    let r = request(&url, "GET", "/v1/objects?kind=vm", None, None, b"", T).unwrap();
    assert_eq!(r.status, 401);

    let mut checked = 0;
    for (role, cookie) in &cookies {
        let seed = format!("seed-{role:?}").to_lowercase();
        for ns in NAMESPACES {
            for verb in [
                Verb::Get,
                Verb::List,
                Verb::Apply,
                Verb::Console,
                Verb::Delete,
            ] {
                let want = allowed(*role, verb, ns);
                let what = format!("{role:?} {verb:?} in {ns}");
                match verb {
                    Verb::Get => {
                        let r = call(
                            &url,
                            "GET",
                            &format!("/v1/objects?kind=vm&namespace={ns}&name={seed}"),
                            cookie,
                            b"",
                        );
                        assert_eq!(
                            r.status == 200,
                            want,
                            "{what}: {}",
                            String::from_utf8_lossy(&r.body)
                        );
                        if want {
                            assert_eq!(r.json()["records"].as_array().unwrap().len(), 1, "{what}");
                        } else {
                            assert_eq!(
                                (r.status, r.json()["code"].clone()),
                                (403, Value::from("Denied")),
                                "{what}"
                            );
                        }
                    }
                    Verb::List => {
                        let r = call(
                            &url,
                            "GET",
                            &format!("/v1/objects?kind=vm&namespace={ns}"),
                            cookie,
                            b"",
                        );
                        assert_eq!(r.status, 200, "{what}");
                        let n = r.json()["records"].as_array().unwrap().len();
                        // Four seeds per namespace, plus what was applied.
                        assert_eq!(n >= 4, want, "{what}: {n} visible");
                        if !want {
                            assert_eq!(n, 0, "{what}");
                        }
                    }
                    Verb::Apply => {
                        let name = format!("new-{role:?}").to_lowercase();
                        let r = call(
                            &url,
                            "POST",
                            "/v1/manifests",
                            cookie,
                            vm(&name, ns).as_bytes(),
                        );
                        assert_eq!(
                            r.status == 200,
                            want,
                            "{what}: {}",
                            String::from_utf8_lossy(&r.body)
                        );
                        if !want {
                            assert_eq!(r.status, 403, "{what}");
                            assert_eq!(r.json()["refused"][0]["code"], "Denied", "{what}");
                        }
                    }
                    Verb::Console => {
                        let r = call(
                            &url,
                            "POST",
                            &format!("/v1/vms/{ns}/{seed}/console"),
                            cookie,
                            b"",
                        );
                        // Allowed: the fake hypervisor has no console to
                        // unlock (409); refused: 403 before anything.
                        assert_eq!(
                            r.status,
                            if want { 409 } else { 403 },
                            "{what}: {}",
                            String::from_utf8_lossy(&r.body)
                        );
                    }
                    Verb::Delete => {
                        let r = call(
                            &url,
                            "DELETE",
                            &format!("/v1/objects?kind=vm&namespace={ns}&name={seed}"),
                            cookie,
                            b"",
                        );
                        assert_eq!(
                            r.status == 200,
                            want,
                            "{what}: {}",
                            String::from_utf8_lossy(&r.body)
                        );
                        let still = node.cli(&["get", "vm", &seed, "-n", ns], None).0 == 0;
                        assert_eq!(
                            still,
                            !want,
                            "{what}: the VM is {}",
                            if still { "still there" } else { "gone" }
                        );
                    }
                }
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 4 * 2 * 5);
    // A denied write is logged with who and why.
    let log = std::fs::read_to_string(&node.log).unwrap();
    assert!(log.contains("push refused"), "refusals are logged");
}

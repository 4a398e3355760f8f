//! The identity commands end to end, through the binary.

use std::process::Command;

fn deorch(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_deorch"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn key_sign_verify_and_sign_manifest() {
    let dir = std::env::temp_dir().join(format!("deorch-idcli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let key = dir.join("user.key");
    let k = key.to_str().unwrap();
    let (code, addr, err) = deorch(&["key", "new", "--out", k]);
    assert_eq!(code, 0, "{err}");
    let addr = addr.trim().to_string();
    assert!(addr.starts_with("bc1q"), "{addr}");
    // Never overwrites a key.
    assert_ne!(deorch(&["key", "new", "--out", k]).0, 0);
    let (_, again, _) = deorch(&["key", "address", "--key", k]);
    assert_eq!(again.trim(), addr);
    let (_, legacy, _) = deorch(&["key", "address", "--key", k, "--type", "p2pkh"]);
    assert!(legacy.trim().starts_with('1'), "{legacy}");

    for (kind, address) in [
        ("p2wpkh", addr.clone()),
        ("p2pkh", legacy.trim().to_string()),
    ] {
        let (code, sig, err) = deorch(&[
            "sign",
            "--key",
            k,
            "--message",
            "hello deorch",
            "--type",
            kind,
        ]);
        assert_eq!(code, 0, "{err}");
        let sig = sig.trim();
        let (code, _, err) = deorch(&[
            "verify",
            "--address",
            &address,
            "--signature",
            sig,
            "--message",
            "hello deorch",
        ]);
        assert_eq!(code, 0, "{kind}: {err}");
        let (code, _, err) = deorch(&[
            "verify",
            "--address",
            &address,
            "--signature",
            sig,
            "--message",
            "hello deorcH",
        ]);
        assert_eq!(code, 1, "a changed message must not verify");
        assert!(err.contains("invalid"), "{err}");
    }

    let manifest = dir.join("net.yaml");
    std::fs::write(&manifest, "apiVersion: deorch.dev/v1alpha1\nkind: Network\nmetadata:\n  name: lan\n  generation: 3\nspec:\n  mtu: 1500\n").unwrap();
    let (code, signed, err) = deorch(&[
        "sign-manifest",
        "-f",
        manifest.to_str().unwrap(),
        "--key",
        k,
        "--cluster",
        &addr,
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        signed.contains("deorch.dev/signer") && signed.contains(&addr),
        "{signed}"
    );
    let value: serde_json::Value = serde_saphyr::from_str(&signed).unwrap();
    assert_eq!(
        deorch::identity::verify_manifest(&value, &addr).unwrap(),
        addr
    );
    assert!(deorch::identity::verify_manifest(&value, "another-cluster").is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}

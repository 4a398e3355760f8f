//! BIP-137 signed messages against signatures made by real wallets and
//! libraries, round trips on every address type and network, tampering,
//! and hostile input.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use deorch::identity::{sign, verify, AddressType, Network, PrivateKey, VerifyError};
use proptest::prelude::*;

fn b64_of_hex(h: &str) -> String {
    BASE64.encode(hex::decode(h).unwrap())
}

const TREZOR_MSG: &str = "This is an example of a signed message.";
// Trezor firmware, `mnemonic_12` test seed: trezor/trezor-suite
// packages/connect/e2e/__fixtures__/verifyMessageSegwit.ts (header 0x24 = 36).
const TREZOR_P2SH_SIG: &str = "249e23edf0e4e47ff1dec27f32cd78c50e74ef018ee8a6adf35ae17c7a9b0dd96f48b493fd7dbab03efb6f439c6383c9523b3bbc5f1a7d158a6af90ab154e9be80";
// Same seed, verifyMessageSegwitNative.ts (header 0x28 = 40).
const TREZOR_P2WPKH_SIG: &str = "289e23edf0e4e47ff1dec27f32cd78c50e74ef018ee8a6adf35ae17c7a9b0dd96f48b493fd7dbab03efb6f439c6383c9523b3bbc5f1a7d158a6af90ab154e9be80";

#[test]
fn p2pkh_compressed_from_bitcore_and_freewallet() {
    // bitpay/bitcore-message test vector (compressed key, header 31-34).
    verify(
        "1F3sAm6ZtwLAUnj7d38pGFxtP3RVEvtsbV",
        "H9L5yLFjti0QTHhPyFrZCT1V/MMnBtXKmoiKDZ78NDBjERki6ZTQZdSMCtkgoNmp17By9ItJr8o7ChX0XxY91nk=",
        TREZOR_MSG.as_bytes(),
    )
    .unwrap();
    // A FreeWallet signature (collected in a public BIP-137 verifier's
    // fixtures, "Verified to work with bitcoinjs-message").
    verify(
        "19QWXpMXeLkoEKEJv2xo9rn8wkPCyxACSX",
        "H+MnkbI81kkWRUys5B6j/svR3I5rQCdjkCH6/Jv88/Q+BoIX6n7hP9Tj/kRqmnfdwLLYv27/pM1hlsWISMVwuBs=",
        b"test",
    )
    .unwrap();
}

#[test]
fn p2pkh_uncompressed_and_compressed_from_bitcoinjs_message() {
    // bitcoinjs/bitcoinjs-message test/fixtures.json valid.verify[0].
    let m = b"vires is numeris";
    let sig_u =
        "G8JawPtQOrybrSP1WHQnQPr67B9S3qrxBrl1mlzoTJOSHEpmnF7D3+t+LX0Xei9J20B5AIdPbeL3AaTBZ4N3bY0=";
    let sig_c =
        "H8JawPtQOrybrSP1WHQnQPr67B9S3qrxBrl1mlzoTJOSHEpmnF7D3+t+LX0Xei9J20B5AIdPbeL3AaTBZ4N3bY0=";
    verify("16UwLL9Risc3QfPqBUvKofHmBQ7wMtjvM", sig_u, m).unwrap();
    verify("1PMycacnJaSqwwJqjawXBErnLsZ7RkXUAs", sig_c, m).unwrap();
    // invalid.verify: no cross verification between compressed and not.
    assert!(matches!(
        verify("16UwLL9Risc3QfPqBUvKofHmBQ7wMtjvM", sig_c, m),
        Err(VerifyError::AddressMismatch(_))
    ));
    assert!(matches!(
        verify("1PMycacnJaSqwwJqjawXBErnLsZ7RkXUAs", sig_u, m),
        Err(VerifyError::AddressMismatch(_))
    ));
    assert!(verify("16UwLL9Risc3QfPqBUvKofHmBQ7wMtjvM", sig_u, b"foobar").is_err());
    assert!(verify("1111111111111111111114oLvT2", sig_c, m).is_err());
}

#[test]
fn p2sh_p2wpkh_from_trezor() {
    let sig = b64_of_hex(TREZOR_P2SH_SIG);
    verify(
        "3CwYaeWxhpXXiHue3ciQez1DLaTEAXcKa1",
        &sig,
        TREZOR_MSG.as_bytes(),
    )
    .unwrap();
    // Trezor's own negative cases: last byte changed, message changed.
    let bad = b64_of_hex(&format!("{}00", &TREZOR_P2SH_SIG[..128]));
    assert!(verify(
        "3CwYaeWxhpXXiHue3ciQez1DLaTEAXcKa1",
        &bad,
        TREZOR_MSG.as_bytes()
    )
    .is_err());
    assert!(verify(
        "3CwYaeWxhpXXiHue3ciQez1DLaTEAXcKa1",
        &sig,
        b"This is an example of a signed message!"
    )
    .is_err());
}

#[test]
fn p2wpkh_from_trezor_mainnet_testnet_and_long_message() {
    let sig = b64_of_hex(TREZOR_P2WPKH_SIG);
    verify(
        "bc1qyjjkmdpu7metqt5r36jf872a34syws33s82q2j",
        &sig,
        TREZOR_MSG.as_bytes(),
    )
    .unwrap();
    verify(
        "tb1qyjjkmdpu7metqt5r36jf872a34syws336p3n3p",
        &sig,
        TREZOR_MSG.as_bytes(),
    )
    .unwrap();
    // 1024-byte message: the length prefix is a 3-byte varint (0xfd ...).
    let long = "VeryLongMessage!".repeat(64);
    let long_sig = b64_of_hex("285ff795c29aef7538f8b3bdb2e8add0d0722ad630a140b6aefd504a5a895cbd867cbb00981afc50edd0398211e8d7c304bb8efa461181bc0afa67ea4a720a89ed");
    verify(
        "bc1qyjjkmdpu7metqt5r36jf872a34syws33s82q2j",
        &long_sig,
        long.as_bytes(),
    )
    .unwrap();
    // The P2WPKH header does not verify for the P2SH address of the same key.
    assert!(matches!(
        verify(
            "3CwYaeWxhpXXiHue3ciQez1DLaTEAXcKa1",
            &sig,
            TREZOR_MSG.as_bytes()
        ),
        Err(VerifyError::HeaderMismatch { .. })
    ));
}

#[test]
fn electrum_convention_compressed_header_for_segwit_addresses() {
    // Electrum and Bitcoin Core sign segwit addresses with header 31-34;
    // rewrite Trezor's header (recovery id 1) to 32 and it must still verify.
    let mut raw = hex::decode(TREZOR_P2WPKH_SIG).unwrap();
    raw[0] = 31 + ((raw[0] - 27) & 3);
    let sig = BASE64.encode(&raw);
    verify(
        "bc1qyjjkmdpu7metqt5r36jf872a34syws33s82q2j",
        &sig,
        TREZOR_MSG.as_bytes(),
    )
    .unwrap();
    verify(
        "3CwYaeWxhpXXiHue3ciQez1DLaTEAXcKa1",
        &sig,
        TREZOR_MSG.as_bytes(),
    )
    .unwrap();
    // …but an uncompressed header cannot sign for a segwit address.
    raw[0] -= 4;
    assert!(verify(
        "bc1qyjjkmdpu7metqt5r36jf872a34syws33s82q2j",
        &BASE64.encode(&raw),
        TREZOR_MSG.as_bytes()
    )
    .is_err());
}

#[test]
fn round_trip_every_type_and_network() {
    for network in Network::ALL {
        for compressed in [true, false] {
            let key = PrivateKey::generate(network).with_compression(compressed);
            for kind in AddressType::ALL {
                let Ok(addr) = key.address(kind) else {
                    assert!(!compressed && kind != AddressType::P2pkh);
                    assert!(sign(&key, b"x", kind).is_err());
                    continue;
                };
                let addr = addr.to_string();
                let msg = format!("deorch round trip {network} {kind} {compressed}");
                let sig = sign(&key, msg.as_bytes(), kind).unwrap();
                verify(&addr, &sig, msg.as_bytes()).unwrap_or_else(|e| panic!("{addr}: {e}"));
                // Tampered message, signature and address are refused.
                assert!(verify(&addr, &sig, format!("{msg}.").as_bytes()).is_err());
                let mut raw = BASE64.decode(&sig).unwrap();
                raw[40] ^= 1;
                assert!(verify(&addr, &BASE64.encode(&raw), msg.as_bytes()).is_err());
                let other = PrivateKey::generate(network)
                    .address(kind)
                    .unwrap()
                    .to_string();
                assert!(matches!(
                    verify(&other, &sig, msg.as_bytes()),
                    Err(VerifyError::AddressMismatch(_))
                ));
            }
        }
    }
}

#[test]
fn unsupported_addresses_are_typed() {
    let key = PrivateKey::generate(Network::Mainnet);
    let sig = sign(&key, b"m", AddressType::P2wpkh).unwrap();
    for a in [
        "bc1qrp33g0q5c5txsp9arysrx4k6zdkfs4nce4xj0gdcccefvpysxf3qccfmv3",
        "bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vqzk5jj0",
    ] {
        assert!(matches!(
            verify(a, &sig, b"m"),
            Err(VerifyError::UnsupportedAddressType(_))
        ));
    }
    assert!(matches!(
        verify("not an address", &sig, b"m"),
        Err(VerifyError::BadAddress(_))
    ));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn hostile_signatures_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..80), msg in ".*") {
        let sig = BASE64.encode(&bytes);
        let r = verify("bc1qyjjkmdpu7metqt5r36jf872a34syws33s82q2j", &sig, msg.as_bytes());
        prop_assert!(r.is_err());
    }

    #[test]
    fn hostile_65_byte_signatures_never_panic(header in 0u8..=255, body in proptest::array::uniform32(any::<u8>()), body2 in proptest::array::uniform32(any::<u8>())) {
        let mut raw = vec![header];
        raw.extend_from_slice(&body);
        raw.extend_from_slice(&body2);
        for a in ["1F3sAm6ZtwLAUnj7d38pGFxtP3RVEvtsbV", "3CwYaeWxhpXXiHue3ciQez1DLaTEAXcKa1", "bc1qyjjkmdpu7metqt5r36jf872a34syws33s82q2j"] {
            prop_assert!(verify(a, &BASE64.encode(&raw), b"m").is_err());
        }
    }

    #[test]
    fn hostile_strings_never_panic(addr in ".*", sig in ".*") {
        let _ = verify(&addr, &sig, b"m");
        let _ = PrivateKey::parse(&addr);
    }
}

#[test]
#[ignore = "measurement"]
fn measure_verify_throughput() {
    let per_sec = deorch::identity::bench_verify(5_000);
    println!("BIP-137 P2WPKH verifications per second on one core: {per_sec:.0}");
}

// BIP-322 test vectors (bitcoin/bips bip-0322.mediawiki, also in
// luke-jr's Bitcoin Core branch src/test/util_tests.cpp): private key
// L3VFeEujGtevx9w18HD1fhRbCH67Az2dpCymeRE1SoPK6XQtaN2k.
const BIP322_ADDR: &str = "bc1q9vza2e8x573nczrlzms0wvx3gsqjx7vavgkx0l";

#[test]
fn bip322_simple_vectors_and_round_trip() {
    use deorch::identity::bip322::sign_simple;
    let key = PrivateKey::parse("L3VFeEujGtevx9w18HD1fhRbCH67Az2dpCymeRE1SoPK6XQtaN2k").unwrap();
    assert_eq!(
        key.address(AddressType::P2wpkh).unwrap().to_string(),
        BIP322_ADDR
    );
    let empty = "AkcwRAIgM2gBAQqvZX15ZiysmKmQpDrG83avLIT492QBzLnQIxYCIBaTpOaD20qRlEylyxFSeEA2ba9YOixpX8z46TSDtS40ASECx/EgAxlkQpQ9hYjgGu6EBCPMVPwVIVJqO4XCsMvViHI=";
    let hello = "AkcwRAIgZRfIY3p7/DoVTty6YZbWS71bc5Vct9p9Fia83eRmw2QCICK/ENGfwLtptFluMGs2KsqoNSk89pO7F29zJLUx9a/sASECx/EgAxlkQpQ9hYjgGu6EBCPMVPwVIVJqO4XCsMvViHI=";
    verify(BIP322_ADDR, empty, b"").unwrap();
    // The spec's second encoding of the same message (another nonce).
    verify(
        BIP322_ADDR,
        "AkgwRQIhAPkJ1Q4oYS0htvyuSFHLxRQpFAY56b70UvE7Dxazen0ZAiAtZfFz1S6T6I23MWI2lK/pcNTWncuyL8UL+oMdydVgzAEhAsfxIAMZZEKUPYWI4BruhAQjzFT8FSFSajuFwrDL1Yhy",
        b"",
    )
    .unwrap();
    verify(BIP322_ADDR, hello, b"Hello World").unwrap();
    assert!(verify(BIP322_ADDR, hello, b"").is_err());
    assert!(verify(BIP322_ADDR, empty, b"Hello World").is_err());
    for m in [&b""[..], b"Hello World", "é".repeat(200).as_bytes()] {
        let ours = sign_simple(&key, m).unwrap();
        verify(BIP322_ADDR, &ours, m).unwrap();
        let other = PrivateKey::generate(Network::Mainnet)
            .address(AddressType::P2wpkh)
            .unwrap()
            .to_string();
        assert!(matches!(
            verify(&other, &ours, m),
            Err(VerifyError::AddressMismatch(_))
        ));
    }
}

proptest! {
    #[test]
    fn hostile_bip322_witnesses_never_panic(bytes in proptest::collection::vec(any::<u8>(), 66..200)) {
        prop_assert!(verify(BIP322_ADDR, &BASE64.encode(&bytes), b"m").is_err());
    }
}

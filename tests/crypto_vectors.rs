//! WXBizMsgCrypt against the peer implementation's vectors (`tests/data/wxbizmsgcrypt.json`,
//! a copy of `shared/vectors/wxbizmsgcrypt.json`): byte-for-byte encryption with the fixed
//! random prefix, decryption, signatures, and every pad length 1..=32.

use std::collections::BTreeSet;

use serde::Deserialize;
use wxdispatch::crypto::{self, CryptoError, MsgCrypt};

#[derive(Deserialize)]
struct File {
    vectors: Vec<Vector>,
}

#[derive(Deserialize)]
struct Vector {
    token: String,
    encoding_aes_key: String,
    receive_id: String,
    plaintext: String,
    random_prefix: String,
    ciphertext_base64: String,
    timestamp: String,
    nonce: String,
    signature_sha1_hex: String,
    pad_len: usize,
}

fn vectors() -> Vec<Vector> {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/wxbizmsgcrypt.json"
    ))
    .unwrap();
    serde_json::from_str::<File>(&text).unwrap().vectors
}

#[test]
fn encrypts_every_vector_byte_for_byte() {
    let vs = vectors();
    assert!(vs.len() >= 32);
    for (i, v) in vs.iter().enumerate() {
        let c = MsgCrypt::new(&v.token, &v.encoding_aes_key, &v.receive_id).unwrap();
        let prefix: [u8; 16] = v
            .random_prefix
            .as_bytes()
            .try_into()
            .expect("16-byte prefix");
        assert_eq!(
            c.encrypt_with_prefix(&prefix, v.plaintext.as_bytes()),
            v.ciphertext_base64,
            "vector {i}"
        );
    }
}

#[test]
fn decrypts_every_vector_and_checks_the_receive_id() {
    for (i, v) in vectors().iter().enumerate() {
        let c = MsgCrypt::new(&v.token, &v.encoding_aes_key, &v.receive_id).unwrap();
        assert_eq!(
            c.decrypt(&v.ciphertext_base64).unwrap(),
            v.plaintext.as_bytes(),
            "vector {i}"
        );
        let other = MsgCrypt::new(&v.token, &v.encoding_aes_key, "someone-else").unwrap();
        assert_eq!(
            other.decrypt(&v.ciphertext_base64),
            Err(CryptoError::ReceiveId),
            "vector {i}"
        );
    }
}

#[test]
fn signatures_match_and_verify_in_constant_time() {
    for (i, v) in vectors().iter().enumerate() {
        assert_eq!(
            crypto::signature(&v.token, &v.timestamp, &v.nonce, &v.ciphertext_base64),
            v.signature_sha1_hex,
            "vector {i}"
        );
        assert!(
            crypto::verify(
                &v.token,
                &v.timestamp,
                &v.nonce,
                &v.ciphertext_base64,
                &v.signature_sha1_hex
            )
            .is_ok()
        );
        let mut bad = v.signature_sha1_hex.clone();
        bad.replace_range(0..1, if bad.starts_with('0') { "1" } else { "0" });
        assert_eq!(
            crypto::verify(&v.token, &v.timestamp, &v.nonce, &v.ciphertext_base64, &bad),
            Err(CryptoError::Signature)
        );
    }
}

#[test]
fn vectors_cover_every_pad_length_and_trailing_bit_keys() {
    let vs = vectors();
    let pads: BTreeSet<usize> = vs.iter().map(|v| v.pad_len).collect();
    assert_eq!(
        pads,
        (1..=32).collect(),
        "every pad length 1..=32 is exercised"
    );
    let strict = vs.iter().filter(|v| {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD
            .decode(format!("{}=", v.encoding_aes_key))
            .is_err()
    });
    assert!(
        strict.count() > 0,
        "some keys have non-zero trailing bits (a strict decoder rejects them)"
    );
    for v in &vs {
        let rid_len = v.receive_id.len();
        let body = 20 + v.plaintext.len() + rid_len;
        assert_eq!(
            32 - body % 32,
            v.pad_len,
            "pad length is over a 32-byte block"
        );
    }
}

#[test]
fn fuzz_random_bytes_never_panic() {
    use rand::{Rng, SeedableRng};
    let v = &vectors()[0];
    let c = MsgCrypt::new(&v.token, &v.encoding_aes_key, &v.receive_id).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=";
    for _ in 0..20_000 {
        let n = rng.random_range(0..400);
        // valid base64 of random bytes: exercises the block, padding and length checks
        let raw: Vec<u8> = (0..n).map(|_| rng.random()).collect();
        use base64::Engine;
        let _ = c.decrypt(&base64::engine::general_purpose::STANDARD.encode(&raw));
        // arbitrary base64-alphabet strings: exercises the decoder
        let s: String = (0..n)
            .map(|_| alphabet[rng.random_range(0..alphabet.len())] as char)
            .collect();
        let _ = c.decrypt(&s);
        let _ = crypto::decode_aes_key(&s);
    }
}

//! WXBizMsgCrypt cost per message (issue 6: encrypt + base64 of a 512-byte message ≤ 1 µs).
//!
//! Every chatbot send encrypts its XML once (`MsgCrypt::encrypt`: AES-256-CBC over the 32-byte
//! padded frame, then standard base64), so this bounds the crypto share of a send's CPU.
//! Run with `cargo bench --bench crypto`; `wxdispatch bench` prints a quick in-process
//! measurement of the same call.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use wxdispatch::crypto::MsgCrypt;

/// The message size the target is stated for: a typical sendmsg XML with a 200-byte text.
const MESSAGE_BYTES: usize = 512;
/// A valid EncodingAESKey (43 characters, the last one with non-zero trailing bits).
const AES_KEY: &str = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C";
const APPID: &str = "P5Zb1RfMtW7rS3k";

fn crypto(c: &mut Criterion) {
    let crypt = MsgCrypt::new("benchTOKEN", AES_KEY, APPID).unwrap();
    let msg = vec![b'x'; MESSAGE_BYTES];
    let encrypted = crypt.encrypt(&msg);
    let mut g = c.benchmark_group("wxbizmsgcrypt");
    g.throughput(Throughput::Bytes(MESSAGE_BYTES as u64));
    g.bench_function("encrypt+base64 512 B", |b| {
        b.iter(|| crypt.encrypt(black_box(&msg)))
    });
    g.bench_function("encrypt+base64 512 B, fixed prefix", |b| {
        let prefix = [7u8; 16];
        b.iter(|| crypt.encrypt_with_prefix(black_box(&prefix), black_box(&msg)))
    });
    g.bench_function("base64 decode+decrypt 512 B", |b| {
        b.iter(|| crypt.decrypt(black_box(&encrypted)).unwrap())
    });
    g.finish();
}

criterion_group!(benches, crypto);
criterion_main!(benches);

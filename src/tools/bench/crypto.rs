//! WXBizMsgCrypt encrypt + base64, in process.

use std::time::Instant;

use anyhow::Context;

use super::report::TableRow;
use crate::config::Channel;
use crate::tools::fixtures;

/// The message size the crypto target is stated for.
pub(super) const CRYPTO_MESSAGE_BYTES: usize = 512;
/// Crypto timing: the median of this many rounds of [`CRYPTO_OPS`] encryptions.
pub(super) const CRYPTO_ROUNDS: usize = 7;
pub(super) const CRYPTO_OPS: usize = 50_000;

/// Median µs per `MsgCrypt::encrypt` (random prefix, AES-256-CBC, base64) of 512 bytes.
pub(super) fn crypto_us_per_op() -> anyhow::Result<f64> {
    let crypt = fixtures::bench_account(Channel::Chatbot, "")
        .crypt()
        .context("crypto: the bench account has no EncodingAESKey")?;
    let msg = vec![b'x'; CRYPTO_MESSAGE_BYTES];
    let mut rounds = Vec::with_capacity(CRYPTO_ROUNDS);
    // One round of warm-up, not counted.
    for round in 0..=CRYPTO_ROUNDS {
        let t0 = Instant::now();
        let mut len = 0usize;
        for _ in 0..CRYPTO_OPS {
            len += std::hint::black_box(crypt.encrypt(std::hint::black_box(&msg))).len();
        }
        std::hint::black_box(len);
        if round > 0 {
            rounds.push(t0.elapsed().as_secs_f64() * 1e6 / CRYPTO_OPS as f64);
        }
    }
    rounds.sort_by(f64::total_cmp);
    Ok(rounds[rounds.len() / 2])
}

/// The crypto figure as a table row.
pub(super) fn crypto_row() -> anyhow::Result<TableRow> {
    eprintln!("[crypto] encrypt + base64 of {CRYPTO_MESSAGE_BYTES} bytes …");
    let us = crypto_us_per_op()?;
    Ok(TableRow::new(
        format!("crypto: encrypt + base64, {CRYPTO_MESSAGE_BYTES} B"),
        format!("{us:.2} µs/op"),
        "≤ 1 µs",
        Some(us <= 1.0),
    ))
}

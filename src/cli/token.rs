//! `wxdispatch token hash`: the SHA-256 to put in `[[http.api_tokens]] sha256`, of a token
//! read from stdin (never from the command line, where `ps` and the shell history would keep
//! it). The same as `printf %s "$TOKEN" | sha256sum`.

use std::io::{Read, Write};

use clap::{Args, Subcommand};
use sha2::Digest;

#[derive(Debug, Args)]
pub struct TokenArgs {
    #[command(subcommand)]
    pub command: TokenCommand,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Read a token from stdin, print its SHA-256 (hex) for `[[http.api_tokens]] sha256`.
    /// One trailing newline is ignored (`echo TOKEN | wxdispatch token hash`).
    Hash,
}

/// Longest token read: far more than any bearer token; stops a mistaken pipe of a file.
const MAX_TOKEN_BYTES: u64 = 4096;

pub fn run(args: TokenArgs) -> anyhow::Result<()> {
    match args.command {
        TokenCommand::Hash => {
            let mut raw = Vec::new();
            std::io::stdin()
                .take(MAX_TOKEN_BYTES + 1)
                .read_to_end(&mut raw)?;
            if raw.len() as u64 > MAX_TOKEN_BYTES {
                anyhow::bail!(
                    "token hash: stdin is over {MAX_TOKEN_BYTES} bytes; pipe only the token"
                );
            }
            let token = strip_newline(&raw);
            if token.is_empty() {
                anyhow::bail!("token hash: no token on stdin");
            }
            writeln!(std::io::stdout().lock(), "{}", hash(token))?;
            Ok(())
        }
    }
}

/// The token without one trailing `\n` or `\r\n`.
fn strip_newline(raw: &[u8]) -> &[u8] {
    let t = raw.strip_suffix(b"\n").unwrap_or(raw);
    t.strip_suffix(b"\r").unwrap_or(t)
}

/// Lowercase hex SHA-256.
pub fn hash(token: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(token))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_is_sha256sum_of_the_token_without_its_newline() {
        // printf %s test | sha256sum
        let want = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
        assert_eq!(hash(strip_newline(b"test\n")), want);
        assert_eq!(hash(strip_newline(b"test\r\n")), want);
        assert_eq!(hash(strip_newline(b"test")), want);
    }
}

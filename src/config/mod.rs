//! The settings tree: `wxdispatch.toml`, overridden key by key from the environment.
//!
//! * File: `--config PATH`, else `$WXDISPATCH_CONFIG`, else `./wxdispatch.toml` if it exists,
//!   else the built-in defaults (which declare no account).
//! * Environment: `WXDISPATCH__SECTION__KEY=value` sets `[section] key`. Accounts are addressed by
//!   name (upper-cased, non-alphanumerics as `_`) or index: `WXDISPATCH__ACCOUNT__SUPPORT__SECRET`,
//!   `WXDISPATCH__ACCOUNT__0__RATE='{ per_second = 5 }'`. A value is the string as written
//!   (read as a number or boolean where the key wants one), except that one starting with `[`
//!   or `{` that parses as a TOML array or inline table is that array or table. An error
//!   about a secret key names the key and the type found, never the value.
//! * Secrets (`token`, `secret`, `encoding_aes_key`, `[database] password`) may also be given as
//!   `<key>_file = "path"`. They are held in [`Secret`], whose `Debug`, `Display` and `Serialize`
//!   print `***`, so no log line, error or `check-config` output can carry them.
//!
//! [`Config::validate`] fails fast with one line that names the offending key.

mod account;
mod api_tokens;
mod files;
mod layers;
mod load;
mod model;
mod secret;
mod urls;
mod validate;

#[cfg(test)]
mod tests;

pub use crate::domain::channel::Channel;
pub use account::{AccountConfig, Rate};
pub use api_tokens::ApiToken;
pub use files::{CONFIG_FILE_MAX, INPUT_FILE_MAX, SECRET_FILE_MAX, read_capped};
pub use model::{
    BrokerConfig, Config, DatabaseConfig, HttpConfig, OutcomesConfig, RetryConfig, StartupConfig,
    SyncConfig, VoiceFormat, WorkerConfig,
};
pub use secret::Secret;
pub use urls::{SecretUrl, redact_url_password};

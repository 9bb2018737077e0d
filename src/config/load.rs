//! Reading the settings: find the file, layer the environment on it, read `*_file` secrets,
//! validate.

use std::path::{Path, PathBuf};

use anyhow::Context;

use super::files::{CONFIG_FILE_MAX, SECRET_FILE_MAX, read_capped};
use super::layers;
use super::model::Config;
use super::secret::Secret;

impl Config {
    /// Load from an explicit path, `$WXDISPATCH_CONFIG`, `./wxdispatch.toml` or defaults,
    /// apply environment overrides, resolve `*_file` secrets and validate.
    pub fn load(path: Option<&Path>) -> anyhow::Result<Self> {
        let env: Vec<(String, String)> = std::env::vars().collect();
        let path = path
            .map(Path::to_path_buf)
            .or_else(|| std::env::var_os("WXDISPATCH_CONFIG").map(PathBuf::from))
            .or_else(|| {
                let p = PathBuf::from("wxdispatch.toml");
                p.exists().then_some(p)
            });
        let text = match &path {
            Some(p) => read_capped(p, CONFIG_FILE_MAX, "config file")?,
            None => String::new(),
        };
        let origin = path
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "defaults".into());
        Self::from_toml_with_env(&text, &env).with_context(|| format!("config ({origin})"))
    }

    /// Parse TOML text, apply `WXDISPATCH__…` overrides from `env`, resolve files, validate.
    pub fn from_toml_with_env(text: &str, env: &[(String, String)]) -> anyhow::Result<Self> {
        let mut cfg = layers::extract(text, env)?;
        cfg.resolve_files()?;
        cfg.validate()?;
        Ok(cfg)
    }

    fn resolve_files(&mut self) -> anyhow::Result<()> {
        fn read(slot: &mut Secret, file: &Option<PathBuf>, key: &str) -> anyhow::Result<()> {
            if let Some(f) = file {
                let s = read_capped(f, SECRET_FILE_MAX, &format!("{key}_file"))?;
                *slot = Secret::new(s.trim_end_matches(['\n', '\r']));
            }
            Ok(())
        }
        read(
            &mut self.database.password,
            &self.database.password_file,
            "database.password",
        )?;
        for (i, a) in self.accounts.iter_mut().enumerate() {
            let p = format!("account[{i}] ({})", a.name);
            read(&mut a.secret, &a.secret_file, &format!("{p}.secret"))?;
            read(&mut a.token, &a.token_file, &format!("{p}.token"))?;
            read(
                &mut a.encoding_aes_key,
                &a.encoding_aes_key_file,
                &format!("{p}.encoding_aes_key"),
            )?;
        }
        Ok(())
    }
}

//! `wxdispatch completions <shell>` and `wxdispatch man`: generated from the same clap tree as
//! the parser, so they cannot drift from it.

use std::path::PathBuf;

use anyhow::Context;

/// `wxdispatch completions <shell>`
#[derive(Debug, clap::Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// `wxdispatch man`
#[derive(Debug, clap::Args)]
pub struct ManArgs {
    /// Write wxdispatch.1 and one page per subcommand (wxdispatch-send.1, …) into this
    /// directory instead of printing wxdispatch.1 on stdout.
    #[arg(long, value_name = "DIR")]
    pub out_dir: Option<PathBuf>,
}

/// Print the completion script of `a.shell` for `cmd` (the binary's clap tree) on stdout.
pub fn completions(mut cmd: clap::Command, a: &CompletionsArgs) -> anyhow::Result<()> {
    // Into a buffer first: clap_complete panics when its writer fails (a closed pipe).
    let mut script = Vec::new();
    clap_complete::generate(a.shell, &mut cmd, "wxdispatch", &mut script);
    write_stdout(&script)
}

/// Write `bytes` to stdout; a closed pipe (`| head`) is not an error.
fn write_stdout(bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(anyhow::Error::new(e).context("writing to stdout"))
        }
        _ => Ok(()),
    }
}

/// Print the man page of `cmd` (the binary's clap tree) on stdout, or write every page into
/// `--out-dir`.
pub fn man(cmd: clap::Command, a: &ManArgs) -> anyhow::Result<()> {
    match &a.out_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("--out-dir: cannot create {}", dir.display()))?;
            clap_mangen::generate_to(cmd, dir)
                .with_context(|| format!("--out-dir: cannot write into {}", dir.display()))?;
            super::output::note(&format!("man pages written to {}", dir.display()));
        }
        None => {
            let mut page = Vec::new();
            clap_mangen::Man::new(cmd)
                .render(&mut page)
                .context("rendering the man page")?;
            write_stdout(&page)?;
        }
    }
    Ok(())
}

//! `xlb apply` and `xlb config`: replace the running configuration with a file, export it,
//! check a file without a daemon.

use std::{
    io::Read as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, anyhow};
use clap::Subcommand;

use super::output::report;
use crate::{
    api::{Client, Request},
    config::Config,
};

#[derive(Subcommand, Debug)]
pub enum ConfigCmd {
    /// Print the running configuration as TOML (accepted back by `xlb apply -f`).
    Export {
        /// Write it to this file, atomically: the file is the whole configuration or is left
        /// as it was (a shell redirection truncates it first, even when the export fails).
        #[arg(short = 'f', long = "file")]
        file: Option<PathBuf>,
    },
    /// Validate a configuration file without a daemon.
    Check {
        /// The TOML file; every error is reported with its place.
        file: PathBuf,
    },
}

/// A configuration file (`-`: stdin), read up to the largest request the daemon takes.
fn read_config(file: &Path) -> Result<String> {
    let limit = crate::api::MAX_REQUEST as u64;
    let mut buf = Vec::new();
    let what = || {
        if file == Path::new("-") {
            "stdin".to_string()
        } else {
            file.display().to_string()
        }
    };
    let read = if file == Path::new("-") {
        std::io::stdin().take(limit + 1).read_to_end(&mut buf)
    } else {
        std::fs::File::open(file).and_then(|f| f.take(limit + 1).read_to_end(&mut buf))
    };
    read.with_context(|| format!("reading {}", what()))?;
    if buf.len() as u64 > limit {
        anyhow::bail!(
            "{} is larger than {} MiB, the most the daemon takes; is it the right file?",
            what(),
            limit >> 20
        );
    }
    String::from_utf8(buf).map_err(|_| anyhow!("{} is not UTF-8 text", what()))
}

pub fn apply(client: &Client, file: &Path, now: bool, force: bool) -> Result<()> {
    let text = read_config(file)?;
    report(&client.change(Request::Apply {
        config: text,
        now,
        force,
    })?);
    Ok(())
}

pub fn run(client: &Client, cmd: ConfigCmd) -> Result<()> {
    match cmd {
        ConfigCmd::Export { file } => {
            let text = client.export()?.config;
            match file {
                None => print!("{text}"),
                Some(f) => crate::state::persist::write_atomic(&f, text.as_bytes())
                    .with_context(|| format!("writing {}", f.display()))?,
            }
        }
        ConfigCmd::Check { file } => {
            let text = read_config(&file)?;
            let c = Config::parse(&text).map_err(|e| anyhow!("{}: {e}", file.display()))?;
            let backends: usize = c.vips.iter().map(|v| v.backends.len()).sum();
            println!(
                "{}: valid ({} VIPs, {backends} backends, {} interfaces)",
                file.display(),
                c.vips.len(),
                c.interfaces.len()
            );
        }
    }
    Ok(())
}

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
    Export,
    /// Validate a configuration file without a daemon.
    Check {
        /// The TOML file; every error is reported with its place.
        file: PathBuf,
    },
}

pub fn apply(client: &Client, file: &Path, now: bool) -> Result<()> {
    let text = if file == Path::new("-") {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("reading stdin")?;
        s
    } else {
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?
    };
    report(&client.change(Request::Apply { config: text, now })?);
    Ok(())
}

pub fn run(client: &Client, cmd: ConfigCmd) -> Result<()> {
    match cmd {
        ConfigCmd::Export => print!("{}", client.export()?.config),
        ConfigCmd::Check { file } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
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

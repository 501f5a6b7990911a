//! How answers are printed: tables for people, JSON (`-o json`) for programs.

use anyhow::Result;
use clap::{Args, ValueEnum};
use serde::Serialize;

use crate::api::ApplyReport;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Output {
    #[default]
    Table,
    Json,
}

#[derive(Args, Clone, Copy, Debug)]
pub struct OutputArg {
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

impl OutputArg {
    pub fn json(&self) -> bool {
        self.output == Output::Json
    }
}

pub fn print_json<T: Serialize>(v: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// Left-aligned columns, two spaces apart.
pub fn table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut w: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.len());
        }
    }
    let line = |cells: Vec<String>| -> String {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<width$}  ", width = w[i]));
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(headers.iter().map(|h| h.to_string()).collect());
    for r in rows {
        out.push_str(&line(r));
    }
    out
}

pub fn human(n: f64) -> String {
    if n >= 1e9 {
        format!("{:.2}G", n / 1e9)
    } else if n >= 1e6 {
        format!("{:.2}M", n / 1e6)
    } else if n >= 1e3 {
        format!("{:.1}k", n / 1e3)
    } else {
        format!("{n:.0}")
    }
}

/// One line saying what a change did.
pub fn report(r: &ApplyReport) {
    println!(
        "applied: {} VIP(s) added, {} changed, {} removed; {} backend(s) added, {} removed, {} draining; {} ring swap(s) in {} us",
        r.vips_added,
        r.vips_changed,
        r.vips_removed,
        r.backends_added,
        r.backends_removed,
        r.backends_draining,
        r.rings_swapped,
        r.elapsed_us
    );
    for w in &r.warnings {
        eprintln!("warning: {w}");
    }
}

//! The `xlb` command: parse the command line, run it, report an error in one line.

use clap::Parser as _;

fn main() {
    let cli = xlb::cli::Cli::parse();
    if let Err(e) = xlb::cli::run(cli) {
        // The chain of causes, each once: many errors already quote their source.
        let mut msg = e.to_string();
        for cause in e.chain().skip(1) {
            let c = cause.to_string();
            if !msg.contains(&c) {
                msg = format!("{msg}: {c}");
            }
        }
        eprintln!("xlb: {msg}");
        std::process::exit(1);
    }
}

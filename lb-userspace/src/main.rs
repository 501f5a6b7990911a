//! The `xlb` command: parse the command line, run it, report an error in one line.

use clap::Parser as _;

fn main() {
    // A reader that goes away (`xlb flows -o json | head`) ends the command quietly, as it
    // does any Unix filter, instead of a panic on the broken pipe.
    // SAFETY: resetting a signal's disposition before any thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
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

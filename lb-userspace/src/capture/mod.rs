//! Packet capture from the forwarder: the record format (`record`), pcapng files (`pcap`), the
//! `xlb capture` client (`client`) and the outcome filter. The daemon owns the switch and the
//! lease (`daemon::capture`).

pub mod client;
pub mod pcap;
pub mod record;

use lb_common::{
    capture::{CAPTURE_ALL_OUTCOMES, CAPTURE_FORWARD},
    stats::Reason,
};

/// What went wrong reading, writing or following a capture (and replaying one).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {source}", .path.display())]
    File {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("writing pcapng: {0}")]
    PcapWrite(#[source] pcap_file::PcapError),
    #[error("{}: {source}", .path.display())]
    PcapRead {
        path: std::path::PathBuf,
        #[source]
        source: pcap_file::PcapError,
    },
    #[error("{}: packet of an undeclared interface", .0.display())]
    UndeclaredInterface(std::path::PathBuf),
    #[error(
        "{}: link type {link} is not supported: the forwarder takes Ethernet frames (capture with tcpdump -i IFACE, not -i any)",
        .path.display()
    )]
    LinkType {
        path: std::path::PathBuf,
        link: String,
    },
    #[error("{what}: {source}")]
    Map {
        what: String,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("writing the output: {0}")]
    Output(#[source] std::io::Error),
    #[error(transparent)]
    Client(#[from] crate::api::client::ClientError),
    #[error(transparent)]
    Dataplane(#[from] crate::dataplane::DataplaneError),
    #[error("replay: {0}")]
    Replay(&'static str),
}

impl Error {
    pub fn map(what: impl std::fmt::Display, source: aya::maps::MapError) -> Error {
        Error::Map {
            what: what.to_string(),
            source,
        }
    }
}

/// An outcome name that is neither a reason nor a group.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown outcome {name:?}: use forward, forwards, drops, passes, all or one of {known}")]
pub struct UnknownOutcome {
    pub name: String,
    pub known: String,
}

/// The bit mask of outcome names and groups; unknown names are an error that lists the known.
pub fn outcome_mask(names: &[String]) -> Result<u32, UnknownOutcome> {
    if names.is_empty() {
        return Ok(CAPTURE_ALL_OUTCOMES);
    }
    let group = |pred: fn(&str) -> bool| {
        Reason::ALL
            .iter()
            .filter(|r| pred(r.name()))
            .fold(0u32, |m, r| m | 1 << *r as u32)
    };
    let mut mask = 0;
    for n in names {
        mask |= match n.as_str() {
            "all" => CAPTURE_ALL_OUTCOMES,
            "forward" => 1 << CAPTURE_FORWARD,
            "forwards" => 1 << CAPTURE_FORWARD | group(|n| n.starts_with("fwd_")),
            "drops" => group(|n| n.starts_with("drop_")),
            "passes" => group(|n| n.starts_with("pass_")),
            other => match Reason::ALL.iter().find(|r| r.name() == other) {
                Some(r) => 1 << *r as u32,
                None => {
                    let known: Vec<&str> = Reason::ALL.iter().map(|r| r.name()).collect();
                    return Err(UnknownOutcome {
                        name: other.to_string(),
                        known: known.join(", "),
                    });
                }
            },
        };
    }
    Ok(mask)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn outcome_names_and_groups_make_masks() {
        assert_eq!(outcome_mask(&[]), Ok(CAPTURE_ALL_OUTCOMES));
        assert_eq!(outcome_mask(&names(&["all"])), Ok(CAPTURE_ALL_OUTCOMES));
        assert_eq!(
            outcome_mask(&names(&["forward", "drop_no_backend"])),
            Ok(1 << CAPTURE_FORWARD | 1 << Reason::DropNoBackend as u32)
        );
        let drops = outcome_mask(&names(&["drops"])).expect("drops");
        let passes = outcome_mask(&names(&["passes"])).expect("passes");
        let forwards = outcome_mask(&names(&["forwards"])).expect("forwards");
        assert_eq!(drops & passes, 0);
        assert_eq!(drops & forwards, 0);
        assert_ne!(drops & 1 << Reason::DropMalformed as u32, 0);
        assert_ne!(passes & 1 << Reason::PassNotVip as u32, 0);
        assert_ne!(forwards & 1 << Reason::FwdIcmp as u32, 0);
        // Answers sent back (tx_too_big, tx_echo) are neither drops, passes nor forwards: only
        // `all` or their names.
        assert_eq!(
            (drops | passes | forwards | 1 << Reason::TxTooBig as u32 | 1 << Reason::TxEcho as u32),
            CAPTURE_ALL_OUTCOMES
        );
        let e = outcome_mask(&names(&["drop_everything"]))
            .expect_err("unknown")
            .to_string();
        assert!(
            e.contains("drop_everything") && e.contains("drop_no_backend"),
            "{e}"
        );
    }
}

//! `xlb capture`: start a capture through the daemon, read the pinned ring until a bound is hit
//! (count, bytes, time) or the operator interrupts, write pcapng or print one line per packet,
//! and stop the capture, renewing its lease meanwhile.

use std::{io::Write, path::PathBuf, time::Duration};

use aya::maps::{Map, MapData, RingBuf};
use serde::Serialize;
use tokio::io::unix::AsyncFd;

use super::{
    Error,
    pcap::NgWriter,
    record::{Clock, Names, Record, Summary},
};
use crate::api::{CaptureFilter, CaptureStarted, Client};

pub struct Options {
    pub filter: CaptureFilter,
    /// pcapng output; `-` is stdout (for `| tcpdump -r -`). None: print a line per packet.
    pub write: Option<PathBuf>,
    pub count: Option<u64>,
    /// Stop before the output would exceed this many bytes.
    pub max_bytes: u64,
    pub duration: Option<Duration>,
    /// JSON lines instead of text lines (without `write`).
    pub json: bool,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    /// Packets written or printed.
    pub captured: u64,
    /// Output bytes (pcapng file size, or frame bytes when printing).
    pub bytes: u64,
    /// What the forwarder matched and lost to a full ring meanwhile.
    pub matched: u64,
    pub lost: u64,
    /// Why the capture ended: count, bytes, duration or interrupt.
    pub ended_by: &'static str,
}

pub fn run(client: &Client, o: &Options) -> Result<Report, Error> {
    let started = client.capture_start(o.filter.clone())?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(Error::Output)?;
    let result = rt.block_on(read(client, &started, o));
    // Stop even when reading failed: the lease would expire anyway, but at once is better.
    let stopped = client.capture_stop(started.session);
    let mut report = result?;
    let stopped = stopped?;
    report.matched = stopped.matched;
    report.lost = stopped.lost;
    Ok(report)
}

async fn read(client: &Client, s: &CaptureStarted, o: &Options) -> Result<Report, Error> {
    let what = s.ring.display();
    let err = |e| Error::map(&what, e);
    let data = MapData::from_pin(&s.ring).map_err(err)?;
    let map = Map::from_map_data(data).map_err(err)?;
    let ring = RingBuf::try_from(map).map_err(err)?;
    // SAFETY: the ring owns its fd and keeps it open, unchanged, until it is dropped with the
    // AsyncFd that owns it.
    let mut fd = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(|e| Error::Output(std::io::Error::other(e.to_string())))?;
    let names = Names::from_pins(&s.pin_dir).unwrap_or_default();
    let clock = Clock::now();
    let mut sink = match &o.write {
        None => Sink::Lines { json: o.json },
        Some(p) => {
            let out: Box<dyn Write> = if p.as_os_str() == "-" {
                Box::new(std::io::stdout().lock())
            } else {
                let f = std::fs::File::create(p).map_err(|source| Error::File {
                    path: p.clone(),
                    source,
                })?;
                Box::new(std::io::BufWriter::new(f))
            };
            let snap = if o.filter.snaplen == 0 {
                lb_common::capture::CAPTURE_SNAPLEN_MAX
            } else {
                o.filter.snaplen
            };
            Sink::Pcapng(NgWriter::new(out, snap, "xlb")?)
        }
    };
    let mut report = Report::default();
    let mut renew = tokio::time::interval(
        Duration::from_millis(s.lease_ms / 4).max(Duration::from_millis(100)),
    );
    let deadline = o.duration.map(|d| tokio::time::Instant::now() + d);
    let until = async {
        match deadline {
            Some(d) => tokio::time::sleep_until(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(until);
    let interrupt = tokio::signal::ctrl_c();
    tokio::pin!(interrupt);
    'outer: loop {
        tokio::select! {
            guard = fd.readable_mut() => {
                let mut guard = guard.map_err(Error::Output)?;
                while let Some(item) = guard.get_inner_mut().next() {
                    let Some(r) = Record::decode(&item) else { continue };
                    drop(item);
                    if r.hdr.session != s.session {
                        continue; // left over from an earlier capture
                    }
                    // A packet that straddled the capture's start has no copy as received
                    // and is recorded as sent: a capture of received frames leaves it out.
                    let as_sent = r.hdr.flags & lb_common::capture::CAPTURE_F_OUTPUT != 0;
                    if as_sent != o.filter.output {
                        continue;
                    }
                    let sum = Summary::of(&r.hdr, &names, &clock);
                    let Some(bytes) = sink.put(&r, &sum, &clock, report.bytes, o.max_bytes)? else {
                        report.ended_by = "bytes";
                        break 'outer;
                    };
                    report.bytes = bytes;
                    report.captured += 1;
                    if o.count.is_some_and(|c| report.captured >= c) {
                        report.ended_by = "count";
                        break 'outer;
                    }
                }
                guard.clear_ready();
                sink.flush()?;
            }
            _ = renew.tick() => {
                client.capture_renew(s.session)?;
            }
            _ = &mut until => {
                report.ended_by = "duration";
                break;
            }
            _ = &mut interrupt => {
                report.ended_by = "interrupt";
                break;
            }
        }
    }
    sink.flush()?;
    Ok(report)
}

/// Where records go: pcapng, or one line (or JSON line) per packet on stdout.
enum Sink {
    Pcapng(NgWriter<Box<dyn Write>>),
    Lines { json: bool },
}

impl Sink {
    /// Write one record unless the output would grow past `max` bytes (pcapng: the file;
    /// lines: the frame bytes); returns the output size after it, or None at the bound.
    fn put(
        &mut self,
        r: &Record,
        sum: &Summary,
        clock: &Clock,
        written: u64,
        max: u64,
    ) -> Result<Option<u64>, Error> {
        match self {
            Sink::Pcapng(w) => {
                // pcapng block overhead is about 32 bytes plus the comment.
                if w.bytes + r.data.len() as u64 + 256 > max {
                    return Ok(None);
                }
                w.write(
                    clock.wall(r.hdr.ktime_ns),
                    r.hdr.len,
                    &r.data,
                    sum.comment(),
                )?;
                Ok(Some(w.bytes))
            }
            Sink::Lines { json } => {
                if written + r.data.len() as u64 > max {
                    return Ok(None);
                }
                let line = if *json {
                    serde_json::to_string(sum).map_err(|e| Error::Output(e.into()))?
                } else {
                    sum.line()
                };
                writeln!(std::io::stdout().lock(), "{line}").map_err(Error::Output)?;
                Ok(Some(written + r.data.len() as u64))
            }
        }
    }

    fn flush(&mut self) -> Result<(), Error> {
        match self {
            Sink::Pcapng(w) => w.flush(),
            Sink::Lines { .. } => std::io::stdout().flush().map_err(Error::Output),
        }
    }
}

/// `64M`, `2G`, `500k` or plain bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, 'k' | 'K')) => (&t[..i], 1u64 << 10),
        Some((i, 'm' | 'M')) => (&t[..i], 1 << 20),
        Some((i, 'g' | 'G')) => (&t[..i], 1 << 30),
        _ => (t, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("{s:?}: expected a size such as 64M, 500k or 1048576"))
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_parse_with_suffixes() {
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("500k"), Ok(500 << 10));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("0").is_err());
        assert!(parse_size("lots").is_err());
        assert!(parse_size("99999999999G").is_err());
    }
}

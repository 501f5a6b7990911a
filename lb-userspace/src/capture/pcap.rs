//! pcapng out (with the forwarder's verdict as each packet's comment, which tcpdump, tshark and
//! Wireshark show) and pcap or pcapng in (for `xlb replay`).

use std::{borrow::Cow, io::Write, path::Path, time::Duration};

use super::Error;

use pcap_file::{
    DataLink,
    pcap::PcapReader,
    pcapng::{
        Block, PcapNgReader, PcapNgWriter,
        blocks::{
            enhanced_packet::{EnhancedPacketBlock, EnhancedPacketOption},
            interface_description::{InterfaceDescriptionBlock, InterfaceDescriptionOption},
        },
    },
};

/// Writes Ethernet frames to a pcapng stream, one interface, nanosecond stamps.
pub struct NgWriter<W: Write> {
    w: PcapNgWriter<W>,
    /// Bytes written so far (for the size bound).
    pub bytes: u64,
}

impl<W: Write> NgWriter<W> {
    pub fn new(out: W, snaplen: u32, name: &str) -> Result<Self, Error> {
        let mut w = PcapNgWriter::new(out).map_err(Error::PcapWrite)?;
        let idb = InterfaceDescriptionBlock {
            linktype: DataLink::ETHERNET,
            snaplen,
            options: vec![
                InterfaceDescriptionOption::IfName(Cow::Owned(name.to_string())),
                // pcap-file writes stamps in nanoseconds; readers must be told.
                InterfaceDescriptionOption::IfTsResol(9),
            ],
        };
        let bytes = w.write_pcapng_block(idb).map_err(Error::PcapWrite)? as u64;
        Ok(NgWriter { w, bytes })
    }

    pub fn write(
        &mut self,
        time: Duration,
        orig_len: u32,
        data: &[u8],
        comment: String,
    ) -> Result<(), Error> {
        let epb = EnhancedPacketBlock {
            interface_id: 0,
            timestamp: time,
            original_len: orig_len,
            data: Cow::Borrowed(data),
            options: vec![EnhancedPacketOption::Comment(Cow::Owned(comment))],
        };
        self.bytes += self.w.write_pcapng_block(epb).map_err(Error::PcapWrite)? as u64;
        Ok(())
    }

    pub fn flush(&mut self) -> Result<(), Error> {
        self.w.get_mut().flush().map_err(Error::Output)
    }
}

/// One frame read from a capture file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub time: Duration,
    pub data: Vec<u8>,
    /// Length on the wire (more than `data` when the capture was truncated).
    pub orig_len: u32,
    /// The packet's first comment (pcapng; xlb puts the verdict there).
    pub comment: Option<String>,
}

const PCAPNG_MAGIC: [u8; 4] = [0x0a, 0x0d, 0x0d, 0x0a];

/// Every Ethernet frame of a pcap or pcapng file, in order.
pub fn read_frames(path: &Path) -> Result<Vec<Frame>, Error> {
    let bytes = std::fs::read(path).map_err(|source| Error::File {
        path: path.into(),
        source,
    })?;
    let what = |source| Error::PcapRead {
        path: path.into(),
        source,
    };
    let mut out = Vec::new();
    if bytes.starts_with(&PCAPNG_MAGIC) {
        let mut r = PcapNgReader::new(&bytes[..]).map_err(what)?;
        while let Some(block) = r.next_block() {
            let (iface, time, orig_len, data, comment) = match block.map_err(what)? {
                Block::EnhancedPacket(p) => {
                    let comment = p.options.iter().find_map(|o| match o {
                        EnhancedPacketOption::Comment(c) => Some(c.to_string()),
                        _ => None,
                    });
                    let data = p.data.into_owned();
                    (p.interface_id, p.timestamp, p.original_len, data, comment)
                }
                Block::SimplePacket(p) => {
                    (0, Duration::ZERO, p.original_len, p.data.into_owned(), None)
                }
                _ => continue,
            };
            let link = r
                .interfaces()
                .get(iface as usize)
                .map(|i| i.linktype)
                .ok_or_else(|| Error::UndeclaredInterface(path.into()))?;
            ethernet(path, link)?;
            out.push(Frame {
                time,
                data,
                orig_len,
                comment,
            });
        }
    } else {
        let mut r = PcapReader::new(&bytes[..]).map_err(what)?;
        ethernet(path, r.header().datalink)?;
        while let Some(p) = r.next_packet() {
            let p = p.map_err(what)?;
            out.push(Frame {
                time: p.timestamp,
                orig_len: p.orig_len,
                data: p.data.into_owned(),
                comment: None,
            });
        }
    }
    Ok(out)
}

fn ethernet(path: &Path, link: DataLink) -> Result<(), Error> {
    if link == DataLink::ETHERNET {
        Ok(())
    } else {
        Err(Error::LinkType {
            path: path.into(),
            link: format!("{link:?}"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pcapng_written_here_reads_back_with_comments_and_lengths() {
        let mut buf = Vec::new();
        let mut w = NgWriter::new(&mut buf, 2048, "xlb").expect("writer");
        w.write(
            Duration::from_millis(1500),
            60,
            &[0xaa; 60],
            "xlb action=tx".into(),
        )
        .expect("write");
        w.write(
            Duration::from_secs(2),
            1514,
            &[0xbb; 128],
            "xlb action=drop".into(),
        )
        .expect("write");
        let written = w.bytes;
        assert_eq!(
            written as usize,
            buf.len() - 28,
            "section header is not counted"
        );

        let dir = std::env::temp_dir().join(format!("xlb-pcap-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("t.pcapng");
        std::fs::write(&path, &buf).expect("write file");
        let frames = read_frames(&path).expect("read");
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[0].data, vec![0xaa; 60]);
        assert_eq!(frames[1].orig_len, 1514);
        assert_eq!(frames[1].data.len(), 128);
        assert_eq!(frames[1].time, Duration::from_secs(2));
        let comments: Vec<_> = frames.iter().map(|f| f.comment.as_deref()).collect();
        assert_eq!(comments, [Some("xlb action=tx"), Some("xlb action=drop")]);

        // Classic pcap, and a link type that is not Ethernet.
        let mut classic = Vec::new();
        let mut pw = pcap_file::pcap::PcapWriter::new(&mut classic).expect("pcap");
        pw.write_packet(&pcap_file::pcap::PcapPacket::new(
            Duration::from_secs(1),
            60,
            &[0xcc; 60],
        ))
        .expect("packet");
        std::fs::write(&path, &classic).expect("write");
        assert_eq!(read_frames(&path).expect("pcap")[0].data, vec![0xcc; 60]);
        let mut raw = Vec::new();
        let hdr = pcap_file::pcap::PcapHeader {
            datalink: DataLink::LINUX_SLL,
            ..Default::default()
        };
        pcap_file::pcap::PcapWriter::with_header(&mut raw, hdr).expect("pcap");
        std::fs::write(&path, &raw).expect("write");
        let e = read_frames(&path).expect_err("not ethernet");
        assert!(e.to_string().contains("not supported"), "{e}");
        std::fs::write(&path, b"garbage").expect("write");
        assert!(read_frames(&path).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}

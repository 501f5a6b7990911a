//! The packet generator's frame template: what `xlb loadgen` writes into the `LOADGEN` map and
//! the `xlb_loadgen` XDP program stamps onto every live frame.

/// Largest header template (Ethernet + IPv6 + TCP fits with room to spare).
pub const TEMPLATE_MAX: usize = 128;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadgenConfig {
    /// Headers of flow 0 with correct checksums; `copy_len` bytes are written to every frame.
    pub template: [u8; TEMPLATE_MAX],
    /// Bytes of `template` copied per frame: a multiple of 8, at most `TEMPLATE_MAX`, and no
    /// more than the frame length.
    pub copy_len: u32,
    /// Distinct flows; frame `n` belongs to flow `n % flows`.
    pub flows: u32,
    /// Offset of the source port (network order) in the frame.
    pub sport_off: u16,
    /// Offset of the low 16 bits of the source address.
    pub saddr_lo_off: u16,
    /// Offset of the IPv4 header checksum (0: IPv6, none).
    pub ip_csum_off: u16,
    /// Offset of the L4 checksum (0: not checksummed, e.g. IPv4 UDP with checksum 0).
    pub l4_csum_off: u16,
    /// Source port of flow 0 and how many ports flows cycle through before the source
    /// address's low 16 bits advance.
    pub sport_base: u16,
    pub sport_span: u16,
    pub _pad: u32,
}

impl Default for LoadgenConfig {
    fn default() -> Self {
        LoadgenConfig {
            template: [0; TEMPLATE_MAX],
            copy_len: 0,
            flows: 1,
            sport_off: 0,
            saddr_lo_off: 0,
            ip_csum_off: 0,
            l4_csum_off: 0,
            sport_base: 1024,
            sport_span: 1,
            _pad: 0,
        }
    }
}

impl LoadgenConfig {
    /// Source port and low address word (host order) of flow `flow`.
    #[inline(always)]
    pub fn flow_fields(&self, flow: u32, saddr_lo0: u16) -> (u16, u16) {
        let span = if self.sport_span == 0 {
            1
        } else {
            self.sport_span as u32
        };
        let sport = self.sport_base.wrapping_add((flow % span) as u16);
        let lo = saddr_lo0.wrapping_add((flow / span) as u16);
        (sport, lo)
    }

    /// What `xlb_loadgen` does to a frame, on a byte slice: the template over its head, then
    /// flow `flow`'s source port and address with the checksums updated incrementally. Used by
    /// the userspace transmit path (AF_PACKET) and to check the XDP program against.
    pub fn stamp(&self, frame: &mut [u8], flow: u32) -> Option<()> {
        let n = (self.copy_len as usize).min(TEMPLATE_MAX);
        frame.get_mut(..n)?.copy_from_slice(&self.template[..n]);
        let word = |f: &[u8], off: u16| -> Option<u16> {
            let o = off as usize;
            Some(u16::from_ne_bytes([*f.get(o)?, *f.get(o + 1)?]))
        };
        let put = |f: &mut [u8], off: u16, v: u16| -> Option<()> {
            let o = off as usize;
            f.get_mut(o..o + 2)?.copy_from_slice(&v.to_ne_bytes());
            Some(())
        };
        let (old_sport, old_lo) = (
            word(frame, self.sport_off)?,
            word(frame, self.saddr_lo_off)?,
        );
        let (sport, lo) = self.flow_fields(flow, u16::from_be(old_lo));
        let (new_sport, new_lo) = (sport.to_be(), lo.to_be());
        put(frame, self.sport_off, new_sport)?;
        put(frame, self.saddr_lo_off, new_lo)?;
        if self.ip_csum_off != 0 {
            let c = word(frame, self.ip_csum_off)?;
            put(
                frame,
                self.ip_csum_off,
                csum_replace(c, [old_lo, 0], [new_lo, 0]),
            )?;
        }
        if self.l4_csum_off != 0 {
            let c = word(frame, self.l4_csum_off)?;
            let c = csum_replace(c, [old_lo, old_sport], [new_lo, new_sport]);
            put(frame, self.l4_csum_off, c)?;
        }
        Some(())
    }
}

const _: () = assert!(core::mem::size_of::<LoadgenConfig>() == TEMPLATE_MAX + 24);

/// RFC 1624 incremental update of a ones'-complement checksum `hc` when 16-bit words change
/// from `old` to `new` (all as stored in the packet).
#[inline(always)]
pub fn csum_replace(hc: u16, old: [u16; 2], new: [u16; 2]) -> u16 {
    let mut sum = (!hc) as u32;
    sum += (!old[0]) as u32 + new[0] as u32;
    sum += (!old[1]) as u32 + new[1] as u32;
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full(words: &[u16]) -> u16 {
        let mut s: u32 = words.iter().map(|&w| w as u32).sum();
        while s >> 16 != 0 {
            s = (s & 0xffff) + (s >> 16);
        }
        !(s as u16)
    }

    #[test]
    fn incremental_checksum_matches_a_full_recompute() {
        let mut w = [
            0x4500u16, 0x0054, 0x1c46, 0x4000, 0x4006, 0, 0xac10, 0x0a63, 0xac10, 0x0a0c,
        ];
        let hc = full(&w);
        let (old_a, old_b) = (w[7], w[3]);
        w[7] = 0xbeef;
        w[3] = 0x1234;
        assert_eq!(csum_replace(hc, [old_a, old_b], [0xbeef, 0x1234]), full(&w));
    }

    #[test]
    fn flows_cycle_ports_then_addresses() {
        let c = LoadgenConfig {
            sport_base: 1000,
            sport_span: 10,
            ..LoadgenConfig::default()
        };
        assert_eq!(c.flow_fields(0, 5), (1000, 5));
        assert_eq!(c.flow_fields(9, 5), (1009, 5));
        assert_eq!(c.flow_fields(10, 5), (1000, 6));
    }
}

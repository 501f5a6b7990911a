//! Bob Jenkins' lookup3 "jhash" exactly as Linux's `include/linux/jhash.h` defines it: a specified,
//! stable algorithm (never Rust's `DefaultHasher`), cheap enough for the per-packet path and
//! identical in the kernel and in userspace because both compile this file.
//!
//! Flow hashing reads packet words as little-endian loads of wire-order bytes (the native load on
//! bpfel and x86_64), so `Addr` words go in unchanged.

use crate::{
    consts::{HASH_SRC_DST_IP, HASH_SRC_IP, HASH_SRC_IP_DST_PORT},
    types::{Addr, FlowKey},
};

pub const JHASH_INITVAL: u32 = 0xdead_beef;

#[inline(always)]
fn mix(a: &mut u32, b: &mut u32, c: &mut u32) {
    *a = a.wrapping_sub(*c);
    *a ^= c.rotate_left(4);
    *c = c.wrapping_add(*b);
    *b = b.wrapping_sub(*a);
    *b ^= a.rotate_left(6);
    *a = a.wrapping_add(*c);
    *c = c.wrapping_sub(*b);
    *c ^= b.rotate_left(8);
    *b = b.wrapping_add(*a);
    *a = a.wrapping_sub(*c);
    *a ^= c.rotate_left(16);
    *c = c.wrapping_add(*b);
    *b = b.wrapping_sub(*a);
    *b ^= a.rotate_left(19);
    *a = a.wrapping_add(*c);
    *c = c.wrapping_sub(*b);
    *c ^= b.rotate_left(4);
    *b = b.wrapping_add(*a);
}

#[inline(always)]
fn finalize(a: &mut u32, b: &mut u32, c: &mut u32) {
    *c ^= *b;
    *c = c.wrapping_sub(b.rotate_left(14));
    *a ^= *c;
    *a = a.wrapping_sub(c.rotate_left(11));
    *b ^= *a;
    *b = b.wrapping_sub(a.rotate_left(25));
    *c ^= *b;
    *c = c.wrapping_sub(b.rotate_left(16));
    *a ^= *c;
    *a = a.wrapping_sub(c.rotate_left(4));
    *b ^= *a;
    *b = b.wrapping_sub(a.rotate_left(14));
    *c ^= *b;
    *c = c.wrapping_sub(b.rotate_left(24));
}

#[inline(always)]
fn nwords(a: u32, b: u32, c: u32, initval: u32) -> u32 {
    let (mut a, mut b, mut c) = (
        a.wrapping_add(initval),
        b.wrapping_add(initval),
        c.wrapping_add(initval),
    );
    finalize(&mut a, &mut b, &mut c);
    c
}

#[inline(always)]
pub fn jhash_3words(a: u32, b: u32, c: u32, initval: u32) -> u32 {
    nwords(
        a,
        b,
        c,
        initval.wrapping_add(JHASH_INITVAL).wrapping_add(3 << 2),
    )
}

#[inline(always)]
pub fn jhash_2words(a: u32, b: u32, initval: u32) -> u32 {
    nwords(
        a,
        b,
        0,
        initval.wrapping_add(JHASH_INITVAL).wrapping_add(2 << 2),
    )
}

#[inline(always)]
pub fn jhash_1word(a: u32, initval: u32) -> u32 {
    nwords(
        a,
        0,
        0,
        initval.wrapping_add(JHASH_INITVAL).wrapping_add(1 << 2),
    )
}

/// `jhash2` over exactly four words (an IPv6 address): one mix round, then the final round with
/// the fourth word. Written out so the verifier sees straight-line code.
#[inline(always)]
pub fn jhash_4words(k: &[u32; 4], initval: u32) -> u32 {
    let init = JHASH_INITVAL.wrapping_add(4 << 2).wrapping_add(initval);
    let (mut a, mut b, mut c) = (init, init, init);
    a = a.wrapping_add(k[0]);
    b = b.wrapping_add(k[1]);
    c = c.wrapping_add(k[2]);
    mix(&mut a, &mut b, &mut c);
    a = a.wrapping_add(k[3]);
    finalize(&mut a, &mut b, &mut c);
    c
}

/// `jhash2` over any number of words, for userspace (Maglev permutations).
pub fn jhash2(k: &[u32], initval: u32) -> u32 {
    let init = JHASH_INITVAL
        .wrapping_add((k.len() as u32) << 2)
        .wrapping_add(initval);
    let (mut a, mut b, mut c) = (init, init, init);
    let mut rest = k;
    while rest.len() > 3 {
        a = a.wrapping_add(rest[0]);
        b = b.wrapping_add(rest[1]);
        c = c.wrapping_add(rest[2]);
        mix(&mut a, &mut b, &mut c);
        rest = &rest[3..];
    }
    match rest.len() {
        3 => {
            c = c.wrapping_add(rest[2]);
            b = b.wrapping_add(rest[1]);
            a = a.wrapping_add(rest[0]);
        }
        2 => {
            b = b.wrapping_add(rest[1]);
            a = a.wrapping_add(rest[0]);
        }
        1 => a = a.wrapping_add(rest[0]),
        _ => return c,
    }
    finalize(&mut a, &mut b, &mut c);
    c
}

/// One word standing for an address: IPv4 as is, IPv6 folded with jhash.
#[inline(always)]
pub fn fold_addr(addr: &Addr, is_v6: bool, seed: u32) -> u32 {
    if is_v6 {
        jhash_4words(&addr.0, seed)
    } else {
        addr.0[0]
    }
}

/// The flow hash of a VIP's hash mode. Ports enter as their raw wire-order `u16` values.
#[inline(always)]
pub fn flow_hash(key: &FlowKey, hash_mode: u8, seed: u32) -> u32 {
    let v6 = key.is_v6();
    let src = fold_addr(&key.src, v6, seed);
    let proto_seed = seed ^ key.proto as u32;
    match hash_mode {
        HASH_SRC_IP => jhash_1word(src, seed),
        HASH_SRC_DST_IP => jhash_2words(src, fold_addr(&key.dst, v6, seed), proto_seed),
        HASH_SRC_IP_DST_PORT => jhash_2words(src, key.dst_port_be as u32, proto_seed),
        _ => {
            let ports = ((key.src_port_be as u32) << 16) | key.dst_port_be as u32;
            jhash_3words(src, fold_addr(&key.dst, v6, seed), ports, proto_seed)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Known answers from a C build of Linux's include/linux/jhash.h; this file must match it.
    #[test]
    fn matches_linux_jhash() {
        assert_eq!(jhash_1word(0xc0a8_0001, 0), 0x141c_753e);
        assert_eq!(jhash_2words(0xc0a8_0001, 0x0a00_0001, 17), 0x36b1_88f8);
        assert_eq!(
            jhash_3words(0xc0a8_0001, 0x0a00_0001, 0x1f90_0050, 6),
            0xd8a5_aae6
        );
        let k = [
            0x0102_0304,
            0x0506_0708,
            0x090a_0b0c,
            0x0d0e_0f10,
            0x1112_1314,
        ];
        assert_eq!(jhash2(&k[..4], 7), 0x69db_b0ec);
        assert_eq!(jhash_4words(&[k[0], k[1], k[2], k[3]], 7), 0x69db_b0ec);
        assert_eq!(jhash2(&k, 0x1234_5678), 0xac04_4ee8);
        assert_eq!(jhash2(&k[..1], 0), 0xec5b_1971);
        assert_eq!(jhash2(&[], 0), 0xdead_beef);
    }
}

//! HPACK's Huffman code (RFC 7541 §5.2, Appendix B), decoding only: baton
//! sends its own strings as they are.
//!
//! The code is canonical (codes of one length are consecutive, in symbol
//! order, after the shorter ones), so its 257 code lengths define it. From
//! them a table is built at compile time that decodes four bits per step:
//! a state is a node of the code's tree, and no code is shorter than five
//! bits, so a step completes at most one symbol.

/// Bits of each symbol's code, symbols 0-255 and EOS (256), from Appendix B.
const LENGTHS: [u8; 257] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, //
    28, 28, 28, 28, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 28, //
    6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, //
    5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10, //
    13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, //
    7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, //
    15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6, 6, 5, //
    6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, //
    20, 22, 20, 20, 22, 22, 22, 23, 22, 23, 23, 23, 23, 23, 24, 23, //
    24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, //
    22, 21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, //
    21, 21, 22, 21, 23, 22, 23, 23, 20, 22, 22, 22, 23, 22, 22, 23, //
    26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, //
    19, 21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27, //
    20, 24, 20, 21, 22, 21, 21, 23, 22, 22, 25, 25, 24, 24, 26, 23, //
    26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26, //
    30,
];

const EOS: u16 = 256;
/// A child that is a symbol rather than a node.
const LEAF: u16 = 0x8000;
/// 257 leaves make 256 inner nodes; node 0 is the root.
const NODES: usize = 256;

/// The step emits `sym`.
const EMIT: u8 = 1;
/// The bits decoded EOS, which a string must not contain.
const FAIL: u8 = 2;
/// A string may end here: on a symbol's last bit, or within padding
/// (at most seven bits, all ones: a prefix of EOS).
const ACCEPT: u8 = 4;

#[derive(Clone, Copy)]
struct Step {
    next: u8,
    sym: u8,
    flags: u8,
}

/// Each symbol's code, from the lengths, as a canonical code assigns them:
/// in order of length, then of symbol, each code one more than the last,
/// shifted left as the length grows.
const fn codes() -> [u32; 257] {
    let mut codes = [0u32; 257];
    let mut next = 0u32;
    let mut len = 1;
    while len <= 30 {
        let mut sym = 0;
        while sym < 257 {
            if LENGTHS[sym] == len {
                codes[sym] = next;
                next += 1;
            }
            sym += 1;
        }
        next <<= 1;
        len += 1;
    }
    codes
}

/// The decoding table: for each node and each four bits, where they lead.
const fn table() -> [[Step; 16]; NODES] {
    let codes = codes();
    let mut children = [[u16::MAX; 2]; NODES];
    let mut depth = [0u8; NODES];
    let mut ones = [false; NODES];
    ones[0] = true;
    let mut nodes = 1;
    let mut sym = 0;
    while sym < 257 {
        let len = LENGTHS[sym] as u32;
        let mut node = 0;
        let mut i = 0;
        while i < len {
            let bit = ((codes[sym] >> (len - 1 - i)) & 1) as usize;
            if i == len - 1 {
                children[node][bit] = LEAF | sym as u16;
            } else {
                if children[node][bit] == u16::MAX {
                    children[node][bit] = nodes as u16;
                    depth[nodes] = depth[node] + 1;
                    ones[nodes] = ones[node] && bit == 1;
                    nodes += 1;
                }
                node = children[node][bit] as usize;
            }
            i += 1;
        }
        sym += 1;
    }

    let mut table = [[Step {
        next: 0,
        sym: 0,
        flags: 0,
    }; 16]; NODES];
    let mut state = 0;
    while state < NODES {
        let mut nibble = 0;
        while nibble < 16 {
            let mut node = state;
            let mut flags = 0;
            let mut out = 0u8;
            let mut b = 4;
            while b > 0 {
                b -= 1;
                let child = children[node][(nibble >> b) & 1];
                if child & LEAF != 0 {
                    let s = child & !LEAF;
                    if s == EOS {
                        flags |= FAIL;
                    }
                    out = s as u8;
                    flags |= EMIT;
                    node = 0;
                } else {
                    node = child as usize;
                }
            }
            if node == 0 || (ones[node] && depth[node] <= 7) {
                flags |= ACCEPT;
            }
            table[state][nibble] = Step {
                next: node as u8,
                sym: out,
                flags,
            };
            nibble += 1;
        }
        state += 1;
    }
    table
}

static TABLE: [[Step; 16]; NODES] = table();

/// The string was not a valid Huffman encoding (EOS in it, or bad padding).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct BadHuffman;

/// Decodes `src`, appending the text to `out`.
pub(super) fn decode(src: &[u8], out: &mut Vec<u8>) -> Result<(), BadHuffman> {
    // Every symbol takes at least five bits.
    out.reserve(src.len() * 8 / 5);
    let mut state = 0usize;
    let mut accept = true;
    for &byte in src {
        for nibble in [byte >> 4, byte & 0x0f] {
            let step = TABLE[state][nibble as usize];
            if step.flags & FAIL != 0 {
                return Err(BadHuffman);
            }
            if step.flags & EMIT != 0 {
                out.push(step.sym);
            }
            state = step.next as usize;
            accept = step.flags & ACCEPT != 0;
        }
    }
    if accept {
        Ok(())
    } else {
        Err(BadHuffman)
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// Encodes `text`, padding with ones: what a client's encoder does.
    pub(in crate::http2) fn encode(text: &[u8]) -> Vec<u8> {
        let codes = codes();
        let mut out = Vec::new();
        let (mut acc, mut bits) = (0u64, 0u32);
        for &c in text {
            let len = LENGTHS[c as usize] as u32;
            acc = (acc << len) | codes[c as usize] as u64;
            bits += len;
            while bits >= 8 {
                bits -= 8;
                out.push((acc >> bits) as u8);
            }
        }
        if bits > 0 {
            out.push(((acc << (8 - bits)) | (0xff >> bits)) as u8);
        }
        out
    }

    fn decoded(src: &[u8]) -> Result<Vec<u8>, BadHuffman> {
        let mut out = Vec::new();
        decode(src, &mut out).map(|()| out)
    }

    #[test]
    fn the_codes_are_those_of_the_rfc() {
        // A few rows of Appendix B, by code and length.
        let codes = codes();
        assert_eq!(codes[b' ' as usize], 0x14);
        assert_eq!(codes[b'0' as usize], 0x0);
        assert_eq!(codes[b'a' as usize], 0x3);
        assert_eq!(codes[b'z' as usize], 0x7b);
        assert_eq!(codes[b'~' as usize], 0x1ffd);
        assert_eq!(codes[0], 0x1ff8);
        assert_eq!(codes[255], 0x3ffffee);
        assert_eq!(codes[256], 0x3fffffff);
    }

    #[test]
    fn decodes_the_rfc_examples() {
        // RFC 7541 C.4.1 and C.6.1.
        let www = [
            0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a, 0x6b, 0xa0, 0xab, 0x90, 0xf4, 0xff,
        ];
        assert_eq!(decoded(&www).unwrap(), b"www.example.com");
        assert_eq!(decoded(&[0x64, 0x02]).unwrap(), b"302");
        assert_eq!(
            decoded(&[0xae, 0xc3, 0x77, 0x1a, 0x4b]).unwrap(),
            b"private"
        );
    }

    #[test]
    fn every_byte_survives_a_round_trip() {
        let all: Vec<u8> = (0..=255u8).collect();
        assert_eq!(decoded(&encode(&all)).unwrap(), all);
        for len in 0..40 {
            let text: Vec<u8> = (0..len).map(|i| (i * 37 + len) as u8).collect();
            assert_eq!(decoded(&encode(&text)).unwrap(), text, "length {len}");
        }
    }

    #[test]
    fn refuses_eos_and_bad_padding() {
        // EOS itself: thirty ones.
        assert_eq!(decoded(&[0xff, 0xff, 0xff, 0xfc]), Err(BadHuffman));
        // A whole byte of padding.
        let mut long = encode(b"a");
        long.push(0xff);
        assert_eq!(decoded(&long), Err(BadHuffman));
        // Padding with a zero in it: 'a' is 00011, then 010 is not a prefix of EOS.
        assert_eq!(decoded(&[0b0001_1010]), Err(BadHuffman));
    }
}

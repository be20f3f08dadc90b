//! HPACK (RFC 7541), as a proxy in front of HTTP/1.1 targets needs it.
//!
//! Requests are decoded in full: indexed fields, literals, the dynamic
//! table and Huffman strings, since clients use all of them. Responses are
//! encoded without the dynamic table: static-table names where there is
//! one, every value as a plain literal, which is what HAProxy sends too.
//! Indexing responses would save bytes on the wire and cost a table lookup
//! per field on every response, and the wire here is a data center's.

mod huffman;
mod table;
#[cfg(test)]
mod tests;

use table::{Dynamic, STATIC};

use crate::http1::ResponseSink;

/// The dynamic table size baton's settings allow a client (the protocol's
/// default, so it is never announced).
pub(super) const TABLE_SIZE: usize = 4096;

/// Why a header block could not be decoded. Each is a connection error
/// (COMPRESSION_ERROR): the table is out of step with the client's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum DecodeError {
    #[error("header block cut short")]
    Truncated,
    #[error("integer too large")]
    IntegerTooLarge,
    #[error("index {0} is in no table")]
    BadIndex(usize),
    #[error("invalid Huffman string")]
    BadHuffman,
    #[error("table size update after a field")]
    LateSizeUpdate,
    #[error("table size {0} above the allowed {TABLE_SIZE}")]
    TableTooLarge(usize),
}

/// A connection's request decoder: its dynamic table, and room for the
/// field being decoded.
#[derive(Debug)]
pub(super) struct Decoder {
    table: Dynamic,
    /// The current literal field's name, then its value.
    scratch: Vec<u8>,
}

impl Decoder {
    pub(super) fn new() -> Self {
        Self {
            table: Dynamic::new(TABLE_SIZE),
            scratch: Vec::new(),
        }
    }

    /// Decodes a whole header block, handing each field, name then value,
    /// to `field` in order.
    pub(super) fn decode<F>(&mut self, mut block: &[u8], mut field: F) -> Result<(), DecodeError>
    where
        F: FnMut(&[u8], &[u8]),
    {
        let mut at_start = true;
        while let Some(&first) = block.first() {
            if first & 0x80 != 0 {
                let index = integer(&mut block, 7)?;
                let (name, value) = entry(&self.table, index)?;
                field(name, value);
            } else if first & 0xc0 == 0x40 {
                self.literal(&mut block, 6, true, &mut field)?;
            } else if first & 0xe0 == 0x20 {
                if !at_start {
                    return Err(DecodeError::LateSizeUpdate);
                }
                let size = integer(&mut block, 5)?;
                if size > TABLE_SIZE {
                    return Err(DecodeError::TableTooLarge(size));
                }
                self.table.resize(size);
                continue;
            } else {
                // Without indexing (0000) or never indexed (0001): alike here.
                self.literal(&mut block, 4, false, &mut field)?;
            }
            at_start = false;
        }
        Ok(())
    }

    /// A literal field (§6.2): its name indexed or literal, its value literal.
    fn literal<F>(
        &mut self,
        block: &mut &[u8],
        prefix: u8,
        indexing: bool,
        field: &mut F,
    ) -> Result<(), DecodeError>
    where
        F: FnMut(&[u8], &[u8]),
    {
        self.scratch.clear();
        match integer(block, prefix)? {
            0 => string(block, &mut self.scratch)?,
            index => {
                let (name, _) = entry(&self.table, index)?;
                self.scratch.extend_from_slice(name);
            }
        }
        let name_len = self.scratch.len();
        string(block, &mut self.scratch)?;
        let (name, value) = self.scratch.split_at(name_len);
        field(name, value);
        if indexing {
            self.table.insert(name, value);
        }
        Ok(())
    }
}

/// Entry `index` of the two tables, static first (§2.3.3).
fn entry(table: &Dynamic, index: usize) -> Result<(&[u8], &[u8]), DecodeError> {
    match index {
        0 => Err(DecodeError::BadIndex(0)),
        1..=61 => Ok(STATIC[index - 1]),
        _ => table.get(index - 62).ok_or(DecodeError::BadIndex(index)),
    }
}

/// An integer with an N-bit prefix (§5.1). Four continuation bytes at most:
/// nothing in a header block this proxy accepts needs more.
fn integer(block: &mut &[u8], prefix: u8) -> Result<usize, DecodeError> {
    let mask = (1u8 << prefix) - 1;
    let (&first, rest) = block.split_first().ok_or(DecodeError::Truncated)?;
    *block = rest;
    let mut value = (first & mask) as usize;
    if value < mask as usize {
        return Ok(value);
    }
    let mut shift = 0;
    loop {
        let (&b, rest) = block.split_first().ok_or(DecodeError::Truncated)?;
        *block = rest;
        value += ((b & 0x7f) as usize) << shift;
        if b & 0x80 == 0 {
            return Ok(value);
        }
        shift += 7;
        if shift > 21 {
            return Err(DecodeError::IntegerTooLarge);
        }
    }
}

/// A string literal (§5.2), appended to `out`.
fn string(block: &mut &[u8], out: &mut Vec<u8>) -> Result<(), DecodeError> {
    let huffman = block.first().ok_or(DecodeError::Truncated)? & 0x80 != 0;
    let len = integer(block, 7)?;
    if len > block.len() {
        return Err(DecodeError::Truncated);
    }
    let (text, rest) = block.split_at(len);
    *block = rest;
    if huffman {
        huffman::decode(text, out).map_err(|_| DecodeError::BadHuffman)
    } else {
        out.extend_from_slice(text);
        Ok(())
    }
}

/// A response's header block as it is written. Nothing goes into the
/// client's dynamic table, so there is no state beyond the bytes (the
/// connection tells the client so with a table size update, see
/// `shared`).
#[derive(Debug)]
pub(super) struct Block(Vec<u8>);

impl Default for Block {
    fn default() -> Self {
        // A usual response's head fits: one allocation, no regrowth.
        Self(Vec::with_capacity(256))
    }
}

impl Block {
    pub(super) fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub(super) fn clear(&mut self) {
        self.0.clear();
    }

    /// `:status`, indexed when the static table has it.
    pub(super) fn status(&mut self, code: u16) {
        let indexed = match code {
            200 => 8,
            204 => 9,
            206 => 10,
            304 => 11,
            400 => 12,
            404 => 13,
            500 => 14,
            _ => 0,
        };
        if indexed != 0 {
            self.0.push(0x80 | indexed);
            return;
        }
        // Literal without indexing, name ":status" (index 8), three digits.
        self.0.extend_from_slice(&[
            0x08,
            3,
            b'0' + (code / 100 % 10) as u8,
            b'0' + (code / 10 % 10) as u8,
            b'0' + (code % 10) as u8,
        ]);
    }

    /// A field as a literal without indexing, its name lowercased (HTTP/2
    /// field names are lowercase; an HTTP/1.1 target's may not be).
    pub(super) fn field(&mut self, name: &[u8], value: &[u8]) {
        let out = &mut self.0;
        match static_name(name) {
            Some(index) => put_integer(index, 4, 0x00, out),
            None => {
                out.push(0x00);
                put_integer(name.len(), 7, 0x00, out);
                let at = out.len();
                out.extend_from_slice(name);
                out[at..].make_ascii_lowercase();
            }
        }
        put_integer(value.len(), 7, 0x00, out);
        out.extend_from_slice(value);
    }
}

impl ResponseSink for Block {
    fn status(&mut self, code: u16) {
        Block::status(self, code);
    }

    fn field(&mut self, name: &[u8], value: &[u8]) {
        Block::field(self, name, value);
    }
}

/// The static table's index for a response field's name, if it has one.
/// Request-only and pseudo names are left out: responses do not carry
/// them, and a miss costs only the literal name.
fn static_name(name: &[u8]) -> Option<usize> {
    // Lower-cased once, then matched whole: a length switch and a compare
    // or two, where comparing case-insensitively with each name costs more.
    let mut buf = [0u8; 27];
    let lower = buf.get_mut(..name.len())?;
    lower.copy_from_slice(name);
    lower.make_ascii_lowercase();
    Some(match &*lower {
        b"accept-ranges" => 18,
        b"access-control-allow-origin" => 20,
        b"age" => 21,
        b"allow" => 22,
        b"cache-control" => 24,
        b"content-disposition" => 25,
        b"content-encoding" => 26,
        b"content-language" => 27,
        b"content-length" => 28,
        b"content-location" => 29,
        b"content-range" => 30,
        b"content-type" => 31,
        b"date" => 33,
        b"etag" => 34,
        b"expires" => 36,
        b"last-modified" => 44,
        b"link" => 45,
        b"location" => 46,
        b"proxy-authenticate" => 48,
        b"refresh" => 52,
        b"retry-after" => 53,
        b"server" => 54,
        b"set-cookie" => 55,
        b"strict-transport-security" => 56,
        b"vary" => 59,
        b"via" => 60,
        b"www-authenticate" => 61,
        _ => return None,
    })
}

/// An integer with an N-bit prefix (§5.1), `flags` in the prefix's high bits.
fn put_integer(mut value: usize, prefix: u8, flags: u8, out: &mut Vec<u8>) {
    let mask = (1usize << prefix) - 1;
    if value < mask {
        out.push(flags | value as u8);
        return;
    }
    out.push(flags | mask as u8);
    value -= mask;
    while value >= 0x80 {
        out.push(0x80 | (value & 0x7f) as u8);
        value >>= 7;
    }
    out.push(value as u8);
}

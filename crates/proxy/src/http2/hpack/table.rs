//! HPACK's two tables (RFC 7541 §2.3): the static one every peer knows,
//! and the dynamic one a client's encoder fills as it goes.

use std::collections::VecDeque;

/// Appendix A: index 1 is the first entry.
pub(super) const STATIC: [(&[u8], &[u8]); 61] = [
    (b":authority", b""),
    (b":method", b"GET"),
    (b":method", b"POST"),
    (b":path", b"/"),
    (b":path", b"/index.html"),
    (b":scheme", b"http"),
    (b":scheme", b"https"),
    (b":status", b"200"),
    (b":status", b"204"),
    (b":status", b"206"),
    (b":status", b"304"),
    (b":status", b"400"),
    (b":status", b"404"),
    (b":status", b"500"),
    (b"accept-charset", b""),
    (b"accept-encoding", b"gzip, deflate"),
    (b"accept-language", b""),
    (b"accept-ranges", b""),
    (b"accept", b""),
    (b"access-control-allow-origin", b""),
    (b"age", b""),
    (b"allow", b""),
    (b"authorization", b""),
    (b"cache-control", b""),
    (b"content-disposition", b""),
    (b"content-encoding", b""),
    (b"content-language", b""),
    (b"content-length", b""),
    (b"content-location", b""),
    (b"content-range", b""),
    (b"content-type", b""),
    (b"cookie", b""),
    (b"date", b""),
    (b"etag", b""),
    (b"expect", b""),
    (b"expires", b""),
    (b"from", b""),
    (b"host", b""),
    (b"if-match", b""),
    (b"if-modified-since", b""),
    (b"if-none-match", b""),
    (b"if-range", b""),
    (b"if-unmodified-since", b""),
    (b"last-modified", b""),
    (b"link", b""),
    (b"location", b""),
    (b"max-forwards", b""),
    (b"proxy-authenticate", b""),
    (b"proxy-authorization", b""),
    (b"range", b""),
    (b"referer", b""),
    (b"refresh", b""),
    (b"retry-after", b""),
    (b"server", b""),
    (b"set-cookie", b""),
    (b"strict-transport-security", b""),
    (b"transfer-encoding", b""),
    (b"user-agent", b""),
    (b"vary", b""),
    (b"via", b""),
    (b"www-authenticate", b""),
];

/// What an entry costs beyond its bytes (§4.1).
const ENTRY_OVERHEAD: usize = 32;

/// The decoder's dynamic table: newest entry first, evicted from the back
/// to stay within the size the encoder last set.
#[derive(Debug)]
pub(super) struct Dynamic {
    /// Name and value back to back, and where the name ends.
    entries: VecDeque<(Box<[u8]>, usize)>,
    size: usize,
    max_size: usize,
}

impl Dynamic {
    pub(super) fn new(max_size: usize) -> Self {
        Self {
            entries: VecDeque::new(),
            size: 0,
            max_size,
        }
    }

    /// Entry `index` of the dynamic table, 0 being the newest.
    pub(super) fn get(&self, index: usize) -> Option<(&[u8], &[u8])> {
        self.entries
            .get(index)
            .map(|(field, name_len)| field.split_at(*name_len))
    }

    /// Adds a field, evicting what it needs room for; one larger than the
    /// whole table empties it and is not kept (§4.4).
    pub(super) fn insert(&mut self, name: &[u8], value: &[u8]) {
        let cost = name.len() + value.len() + ENTRY_OVERHEAD;
        self.evict_to(self.max_size.saturating_sub(cost));
        if cost > self.max_size {
            return;
        }
        let mut field = Vec::with_capacity(name.len() + value.len());
        field.extend_from_slice(name);
        field.extend_from_slice(value);
        self.entries
            .push_front((field.into_boxed_slice(), name.len()));
        self.size += cost;
    }

    /// A dynamic table size update (§6.3).
    pub(super) fn resize(&mut self, max_size: usize) {
        self.max_size = max_size;
        self.evict_to(max_size);
    }

    fn evict_to(&mut self, size: usize) {
        while self.size > size {
            let Some((field, _)) = self.entries.pop_back() else {
                break;
            };
            self.size -= field.len() + ENTRY_OVERHEAD;
        }
    }

    #[cfg(test)]
    pub(super) fn size(&self) -> usize {
        self.size
    }
}

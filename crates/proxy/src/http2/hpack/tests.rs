use super::*;

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn decode(decoder: &mut Decoder, block: &[u8]) -> Result<Vec<(String, String)>, DecodeError> {
    let mut fields = Vec::new();
    decoder.decode(block, |n, v| {
        fields.push((
            String::from_utf8_lossy(n).into_owned(),
            String::from_utf8_lossy(v).into_owned(),
        ))
    })?;
    Ok(fields)
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect()
}

/// RFC 7541 C.3 (plain literals) and C.4 (Huffman): three requests on one
/// connection, each leaning on the table the ones before it filled.
#[test]
fn decodes_the_rfc_request_sequences() {
    let first = pairs(&[
        (":method", "GET"),
        (":scheme", "http"),
        (":path", "/"),
        (":authority", "www.example.com"),
    ]);
    let mut second = first.clone();
    second.push(("cache-control".into(), "no-cache".into()));
    let third = pairs(&[
        (":method", "GET"),
        (":scheme", "https"),
        (":path", "/index.html"),
        (":authority", "www.example.com"),
        ("custom-key", "custom-value"),
    ]);
    let plain = [
        "8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
        "8286 84be 5808 6e6f 2d63 6163 6865",
        "8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65",
    ];
    let huffman = [
        "8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff",
        "8286 84be 5886 a8eb 1064 9cbf",
        "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf",
    ];
    for blocks in [plain, huffman] {
        let mut decoder = Decoder::new();
        assert_eq!(decode(&mut decoder, &hex(blocks[0])).unwrap(), first);
        assert_eq!(decoder.table.size(), 57);
        assert_eq!(decode(&mut decoder, &hex(blocks[1])).unwrap(), second);
        assert_eq!(decoder.table.size(), 110);
        assert_eq!(decode(&mut decoder, &hex(blocks[2])).unwrap(), third);
        assert_eq!(decoder.table.size(), 164);
    }
}

#[test]
fn a_smaller_table_evicts_the_oldest_entries() {
    let mut decoder = Decoder::new();
    decode(
        &mut decoder,
        &hex("8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d"),
    )
    .unwrap();
    // A size update to 110, then cache-control: no-cache (53) indexed.
    // Both fit in 110 exactly; a third entry evicts the :authority one.
    let mut block = vec![0x3f, 0x4f];
    block.extend(hex("5808 6e6f 2d63 6163 6865"));
    decode(&mut decoder, &block).unwrap();
    assert_eq!(decoder.table.size(), 110);
    decode(&mut decoder, &hex("4003 6162 6303 7879 7a")).unwrap(); // abc: xyz
    assert_eq!(decoder.table.size(), 53 + 38);
    assert_eq!(
        decode(&mut decoder, &hex("be bf")).unwrap(),
        pairs(&[("abc", "xyz"), ("cache-control", "no-cache")])
    );
    assert_eq!(
        decode(&mut decoder, &hex("c0")),
        Err(DecodeError::BadIndex(64))
    );
    // Size zero empties it.
    decode(&mut decoder, &[0x20]).unwrap();
    assert_eq!(
        decode(&mut decoder, &hex("be")),
        Err(DecodeError::BadIndex(62))
    );
}

#[test]
fn refuses_what_would_put_the_tables_out_of_step() {
    let mut decoder = Decoder::new();
    assert_eq!(decode(&mut decoder, &[0x80]), Err(DecodeError::BadIndex(0)));
    assert_eq!(
        decode(&mut decoder, &[0xbe]),
        Err(DecodeError::BadIndex(62))
    );
    // A size update after a field, and one above the limit.
    assert_eq!(
        decode(&mut decoder, &[0x82, 0x20]),
        Err(DecodeError::LateSizeUpdate)
    );
    assert_eq!(
        decode(&mut decoder, &[0x3f, 0xe2, 0x1f]),
        Err(DecodeError::TableTooLarge(4097))
    );
    // A literal longer than the block, an integer without end, bad Huffman.
    assert_eq!(
        decode(&mut decoder, &hex("4003 6162")),
        Err(DecodeError::Truncated)
    );
    assert_eq!(
        decode(&mut decoder, &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff]),
        Err(DecodeError::IntegerTooLarge)
    );
    assert_eq!(
        decode(&mut decoder, &[0x40, 0x81, 0xff, 0x00]),
        Err(DecodeError::BadHuffman)
    );
}

#[test]
fn never_indexed_and_unindexed_literals_leave_the_table_alone() {
    let mut decoder = Decoder::new();
    // 0x10: never indexed, new name; 0x04: without indexing, name :path.
    let mut block = hex("1003 6162 6303 7879 7a");
    block.extend(hex("0405 2f61 3f62 3d"));
    assert_eq!(
        decode(&mut decoder, &block).unwrap(),
        pairs(&[("abc", "xyz"), (":path", "/a?b=")])
    );
    assert_eq!(decoder.table.size(), 0);
}

#[test]
fn large_integers_take_continuation_bytes() {
    for value in [0, 14, 15, 16, 127, 128, 1337, 70_000, (1 << 28) - 1] {
        let mut out = Vec::new();
        put_integer(value, 4, 0x00, &mut out);
        let mut slice = out.as_slice();
        assert_eq!(integer(&mut slice, 4), Ok(value), "{value}");
        assert!(slice.is_empty());
    }
    // RFC 7541 C.1.2: 1337 with a 5-bit prefix.
    let mut out = Vec::new();
    put_integer(1337, 5, 0x00, &mut out);
    assert_eq!(out, [0x1f, 0x9a, 0x0a]);
}

#[test]
fn responses_decode_to_what_was_encoded() {
    let mut block = Block::default();
    block.status(200);
    block.field(b"Content-Type", b"text/plain");
    block.field(b"X-Custom-Header", b"a value");
    block.field(b"set-cookie", b"a=1");
    let mut decoder = Decoder::new();
    assert_eq!(
        decode(&mut decoder, block.as_bytes()).unwrap(),
        pairs(&[
            (":status", "200"),
            ("content-type", "text/plain"),
            ("x-custom-header", "a value"),
            ("set-cookie", "a=1"),
        ])
    );
    for code in [100, 204, 302, 404, 502, 999] {
        let mut block = Block::default();
        block.status(code);
        assert_eq!(
            decode(&mut decoder, block.as_bytes()).unwrap(),
            pairs(&[(":status", &code.to_string())])
        );
    }
    let long = "v".repeat(300);
    let mut block = Block::default();
    block.field(b"x-long", long.as_bytes());
    assert_eq!(
        decode(&mut decoder, block.as_bytes()).unwrap(),
        pairs(&[("x-long", &long)])
    );
    assert_eq!(decoder.table.size(), 0, "nothing is indexed");
}

#[test]
fn response_names_find_their_static_entry_in_any_case() {
    // Names a response carries (not pseudo, not request-only).
    let request_only = [
        "accept-charset",
        "accept-encoding",
        "accept-language",
        "accept",
        "authorization",
        "cookie",
        "expect",
        "from",
        "host",
        "if-match",
        "if-modified-since",
        "if-none-match",
        "if-range",
        "if-unmodified-since",
        "max-forwards",
        "proxy-authorization",
        "range",
        "referer",
        "transfer-encoding",
        "user-agent",
    ];
    for (i, (name, _)) in STATIC.iter().enumerate().skip(14) {
        let text = std::str::from_utf8(name).unwrap();
        let want = (!request_only.contains(&text)).then_some(i + 1);
        assert_eq!(static_name(name), want, "{text}");
        assert_eq!(static_name(text.to_uppercase().as_bytes()), want, "{text}");
    }
    assert_eq!(static_name(b"x-custom"), None);
}

//! What a request tells the router beyond its Host: the color it asks for
//! (`X-Baton-Color`, or the cookie baton sets for it) and who its user is,
//! for a canary's stickiness. Both request paths answer the same questions
//! from their own form of the head.

use baton_core::Color;

use crate::router::NoRoute;

/// The header that asks for one color, for smoke tests and people checking by hand.
pub(crate) const COLOR_HEADER: &str = "x-baton-color";
/// The cookie that keeps asking for it, set on the answer to the header.
pub(crate) const COLOR_COOKIE: &str = "baton-color";

/// A request, as routing sees it.
pub(crate) trait Ask {
    fn host(&self) -> Option<&str>;
    /// The `X-Baton-Color` header's value.
    fn color_header(&self) -> Option<&[u8]>;
    /// The Cookie header's value (HTTP/2's split cookies joined).
    fn cookies(&self) -> Option<&[u8]>;
    /// Any header's value, by lower-case name; the slow path of header stickiness.
    fn header(&self, name: &str) -> Option<&[u8]>;
    /// The client's address as text.
    fn client_ip(&self) -> &str;

    /// One cookie's value.
    fn cookie(&self, name: &str) -> Option<&[u8]> {
        cookie_in(self.cookies()?, name)
    }
}

/// A color the request asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Asked {
    /// By header: it must be served by that color or refused.
    Header(Color),
    /// By cookie: a stale one (the color is gone) falls back to normal routing.
    Cookie(Color),
}

/// The color `ask` asks for; the cookie is only looked at when `cookies`
/// is true (some other color than the live one runs), sparing the scan.
pub(crate) fn asked_color(ask: &impl Ask, cookies: bool) -> Result<Option<Asked>, NoRoute> {
    if let Some(value) = ask.color_header() {
        return parse_color(value)
            .map(|c| Some(Asked::Header(c)))
            .ok_or(NoRoute::BadColor);
    }
    if !cookies {
        return Ok(None);
    }
    Ok(ask
        .cookie(COLOR_COOKIE)
        .and_then(parse_color)
        .map(Asked::Cookie))
}

fn parse_color(value: &[u8]) -> Option<Color> {
    match value.trim_ascii() {
        v if v.eq_ignore_ascii_case(b"blue") => Some(Color::Blue),
        v if v.eq_ignore_ascii_case(b"green") => Some(Color::Green),
        _ => None,
    }
}

/// `name`'s value in a Cookie header (`a=1; b=2`).
pub(crate) fn cookie_in<'a>(header: &'a [u8], name: &str) -> Option<&'a [u8]> {
    header.split(|&b| b == b';').find_map(|pair| {
        let pair = pair.trim_ascii();
        let value = pair.strip_prefix(name.as_bytes())?.strip_prefix(b"=")?;
        Some(value.trim_ascii())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cookies_by_exact_name() {
        let h = b"a=1; baton-color=green;baton-web=7.c ; x=";
        assert_eq!(cookie_in(h, "baton-color"), Some(&b"green"[..]));
        assert_eq!(cookie_in(h, "baton-web"), Some(&b"7.c"[..]));
        assert_eq!(cookie_in(h, "x"), Some(&b""[..]));
        assert_eq!(cookie_in(h, "baton"), None);
        assert_eq!(cookie_in(h, "color"), None);
    }
}

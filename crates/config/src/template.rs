//! Strings with `{placeholders}` (`{port}`, `{version}`, ...) filled in when an
//! instance starts. Placeholders are checked at load time so a typo such as
//! `{prot}` is a config error, not a broken process at deploy time.

use std::fmt;

/// A validated string with placeholders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template(String);

/// The values placeholders are replaced with.
#[derive(Debug, Clone, Default)]
pub struct Vars<'a> {
    pub port: Option<u16>,
    pub version: &'a str,
    pub color: &'a str,
    pub service: &'a str,
    pub preview_url: Option<&'a str>,
}

/// Placeholders allowed where an instance is started.
pub const INSTANCE_VARS: &[&str] = &["port", "version", "color", "service"];
/// Placeholders allowed in the smoke command.
pub const SMOKE_VARS: &[&str] = &["version", "color", "service", "preview_url"];

impl Template {
    /// Checks every `{name}` against `allowed`; `{{` and `}}` are literal braces.
    pub fn new(s: &str, allowed: &[&str]) -> Result<Self, String> {
        let mut rest = s;
        while let Some(i) = rest.find(['{', '}']) {
            let after = &rest[i + 1..];
            if after.starts_with(&rest[i..i + 1]) {
                rest = &after[1..];
                continue;
            }
            if &rest[i..i + 1] == "}" {
                return Err(format!("unmatched '}}' in {s:?}"));
            }
            let end = after
                .find('}')
                .ok_or_else(|| format!("unclosed '{{' in {s:?}"))?;
            let name = &after[..end];
            if !allowed.contains(&name) {
                return Err(format!(
                    "unknown placeholder {{{name}}} in {s:?} (allowed here: {})",
                    allowed
                        .iter()
                        .map(|a| format!("{{{a}}}"))
                        .collect::<Vec<_>>()
                        .join(" ")
                ));
            }
            rest = &after[end + 1..];
        }
        Ok(Self(s.to_string()))
    }

    /// The text with every placeholder replaced.
    pub fn render(&self, vars: &Vars<'_>) -> String {
        let mut out = String::with_capacity(self.0.len());
        let mut rest = self.0.as_str();
        while let Some(i) = rest.find(['{', '}']) {
            out.push_str(&rest[..i]);
            let after = &rest[i + 1..];
            if after.starts_with(&rest[i..i + 1]) {
                out.push_str(&rest[i..i + 1]);
                rest = &after[1..];
                continue;
            }
            let end = after.find('}').unwrap_or(after.len());
            match &after[..end] {
                "port" => out.push_str(&vars.port.map(|p| p.to_string()).unwrap_or_default()),
                "version" => out.push_str(vars.version),
                "color" => out.push_str(vars.color),
                "service" => out.push_str(vars.service),
                "preview_url" => out.push_str(vars.preview_url.unwrap_or_default()),
                _ => {}
            }
            rest = after.get(end + 1..).unwrap_or("");
        }
        out.push_str(rest);
        out
    }

    /// The text as written, placeholders unfilled.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

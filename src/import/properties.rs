//! Reader for the properties dialect of mod_jk's `workers.properties` and
//! `uriworkermap.properties` (what `jk_map.c` accepts).
//!
//! It is its own small parser rather than a Java-properties crate because
//! mod_jk differs from Java: `#` starts a comment anywhere on a line,
//! `$(name)` expands an earlier property, and keys may repeat (list keys
//! such as `worker.list` accumulate). Every entry keeps the line it starts
//! on, so every later complaint can name `file:line`.

use super::error::{syntax, ImportError};
use std::collections::{HashMap, HashSet};
use std::path::Path;

/// Longest value accepted after joining continuation lines and expanding
/// references; bounds hostile input such as `a=$(a)$(a)` repeated, which
/// doubles on every line.
const MAX_VALUE_LEN: usize = 64 * 1024;

/// One `key=value` setting as written (value already expanded), with the
/// line it starts on so messages can point at it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Property {
    /// The key, trimmed (`worker.node1.port`, or a URI pattern in
    /// `uriworkermap.properties`).
    pub key: String,
    /// The value, trimmed, continuation lines joined and `$(name)`
    /// references replaced.
    pub value: String,
    /// 1-based line the setting starts on.
    pub line: usize,
}

/// A parsed file: settings in file order, duplicates kept (mod_jk appends
/// list keys and lets later scalar keys win; the caller decides which),
/// plus the names some `$(name)` used, so helper variables are not
/// reported as unknown settings.
#[derive(Debug, Default, Clone)]
pub struct Properties {
    /// Every setting, in the order written.
    pub entries: Vec<Property>,
    /// Names read through `$(name)`.
    pub referenced: HashSet<String>,
}

/// Parse properties text. `file` is only used in error messages.
///
/// Never panics; any line that is not `key=value`, a comment or blank is a
/// [`ImportError::Syntax`] naming `file:line` and what to do about it.
pub fn parse(file: &Path, text: &str) -> Result<Properties, ImportError> {
    let mut out = Properties::default();
    let mut defined: HashMap<String, String> = HashMap::new();
    let mut lines = text.lines().enumerate();
    while let Some((i, first)) = lines.next() {
        let line = i + 1;
        let mut logical = clean(first).to_owned();
        while logical.ends_with('\\') {
            logical.pop();
            match lines.next() {
                Some((_, next)) => {
                    logical.push_str(clean(next));
                    if logical.len() > MAX_VALUE_LEN {
                        return Err(syntax(
                            file,
                            line,
                            "continued line is longer than 64 KiB; remove the trailing '\\'",
                        ));
                    }
                }
                None => break,
            }
        }
        let logical = logical.trim();
        if logical.is_empty() {
            continue;
        }
        let Some((key, value)) = logical.split_once('=') else {
            return Err(syntax(
                file,
                line,
                format!(
                    "expected key=value, found {:?}; fix the line or comment it out with #",
                    snippet(logical)
                ),
            ));
        };
        let key = key.trim();
        if key.is_empty() {
            return Err(syntax(
                file,
                line,
                format!(
                    "no key before '=' in {:?}; write key=value",
                    snippet(logical)
                ),
            ));
        }
        if key.chars().any(char::is_whitespace) {
            return Err(syntax(
                file,
                line,
                format!(
                    "key {:?} contains whitespace; keys look like worker.node1.port",
                    snippet(key)
                ),
            ));
        }
        let value = expand(value.trim(), &defined, &mut out.referenced)
            .map_err(|p| syntax(file, line, p))?;
        defined.insert(key.to_owned(), value.clone());
        out.entries.push(Property {
            key: key.to_owned(),
            value,
            line,
        });
    }
    Ok(out)
}

/// The line without its comment (`#` anywhere, as in `jk_map.c`) and
/// surrounding whitespace.
fn clean(line: &str) -> &str {
    let line = match line.find('#') {
        Some(at) => &line[..at],
        None => line,
    };
    line.trim()
}

/// Replace every `$(name)` by the value of the last earlier property
/// `name`, or else the environment variable `name` (mod_jk does both).
fn expand(
    value: &str,
    defined: &HashMap<String, String>,
    referenced: &mut HashSet<String>,
) -> Result<String, String> {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(at) = rest.find("$(") {
        out.push_str(&rest[..at]);
        let after = &rest[at + 2..];
        let Some(end) = after.find(')') else {
            return Err(format!(
                "unterminated reference in {:?}; close it as $(name)",
                snippet(value)
            ));
        };
        let name = after[..end].trim();
        if name.is_empty() {
            return Err("empty reference $(); write $(name) with a property defined above".into());
        }
        let Some(v) = defined
            .get(name)
            .cloned()
            .or_else(|| std::env::var(name).ok())
        else {
            return Err(format!(
                "$({name}) is neither a property defined above this line nor an environment variable; define {name}=... earlier in the file"
            ));
        };
        referenced.insert(name.to_owned());
        out.push_str(&v);
        if out.len() > MAX_VALUE_LEN {
            return Err("value is longer than 64 KiB after expanding $(...) references".into());
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// At most 60 characters of `s`, for messages.
pub(super) fn snippet(s: &str) -> String {
    let mut out: String = s.chars().take(60).collect();
    if out.len() < s.len() {
        out.push_str("...");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Result<Properties, ImportError> {
        parse(Path::new("w.properties"), text)
    }

    fn kv(text: &str) -> Vec<(String, String, usize)> {
        p(text)
            .unwrap()
            .entries
            .into_iter()
            .map(|e| (e.key, e.value, e.line))
            .collect()
    }

    #[test]
    fn comments_blank_lines_and_whitespace() {
        let got =
            kv("# header\n\n  worker.a.port = 8009  \nworker.a.host=h # trailing\n   # indented\n");
        assert_eq!(
            got,
            vec![
                ("worker.a.port".into(), "8009".into(), 3),
                ("worker.a.host".into(), "h".into(), 4),
            ]
        );
    }

    #[test]
    fn continuation_joins_lines_and_keeps_start_line() {
        let got = kv("x=1\nworker.lb.balance_workers=a,\\\n   b,\\\n   c\ny=2\n");
        assert_eq!(
            got[1],
            ("worker.lb.balance_workers".into(), "a,b,c".into(), 2)
        );
        assert_eq!(got[2], ("y".into(), "2".into(), 5));
        // A trailing backslash on the last line is dropped.
        assert_eq!(kv("a=b\\")[0].1, "b");
    }

    #[test]
    fn references_expand_earlier_properties() {
        let r =
            p("base=10.0.0\nworker.a.host=$(base).1\nworker.b.host=$( base ).2$(base)\n").unwrap();
        assert_eq!(r.entries[1].value, "10.0.0.1");
        assert_eq!(r.entries[2].value, "10.0.0.210.0.0");
        assert!(r.referenced.contains("base"));
    }

    #[test]
    fn value_may_contain_equals() {
        assert_eq!(kv("/a/*=lb;reply_timeout=5")[0].1, "lb;reply_timeout=5");
    }

    #[test]
    fn errors_name_file_and_line() {
        for (text, line, needle) in [
            ("a=1\nthis is not a setting\n", 2, "expected key=value"),
            ("=x", 1, "no key"),
            ("a b=1", 1, "whitespace"),
            (
                "a=1\nb=$(nope_not_defined_anywhere_42)",
                2,
                "nope_not_defined_anywhere_42",
            ),
            ("a=$(open", 1, "unterminated"),
            ("a=$()", 1, "empty reference"),
        ] {
            let e = p(text).unwrap_err().to_string();
            assert!(
                e.starts_with(&format!("w.properties:{line}: ")),
                "{text:?} -> {e}"
            );
            assert!(e.contains(needle), "{text:?} -> {e}");
            assert!(!e.contains('\n'), "{e}");
        }
    }

    #[test]
    fn garbage_never_panics() {
        let pieces = [
            "=",
            "\\",
            "$(",
            ")",
            "#",
            "worker.",
            ".",
            "\u{e9}",
            "\u{1F600}",
            " ",
            "\t",
            "\r",
            "a",
            "$(a)",
            "\0",
            "==",
            "\\\n",
            "\n",
            "[",
            "\"",
        ];
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..3000 {
            let mut s = String::new();
            for _ in 0..(seed % 24) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                s.push_str(pieces[(seed % pieces.len() as u64) as usize]);
            }
            let _ = p(&s);
        }
    }
}

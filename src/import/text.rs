//! Small text helpers shared by the notes, the merge of global settings
//! and the TOML writer; they depend on nothing else of the import.

/// Replace control characters so a note or comment stays one line.
pub(super) fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// `1500` -> `"1500ms"`, `2000` -> `"2s"`, as humantime reads them.
pub(super) fn duration(ms: u64) -> String {
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

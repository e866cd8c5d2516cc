//! Reading `workers.properties` into workers and their settings.
//!
//! mod_jk writes one worker across many `worker.NAME.DIRECTIVE` lines and
//! lets workers inherit from templates (`reference`); the mapping wants
//! each worker as one settings map with every value's line kept, so this
//! module groups the lines, resolves references and says what type each
//! worker is, before anything is mapped.

use super::error::{syntax, ImportError};
use super::properties::{self, Properties, Property};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

/// Keys that mod_jk accumulates (`a,b` then `c` gives `a,b,c`) instead of
/// overriding.
const LIST_DIRECTIVES: &[&str] = &["balance_workers", "balanced_workers", "mount"];

/// How deep `worker.X.reference` chains are followed (mod_jk: 20).
const MAX_REFERENCE_DEPTH: usize = 20;

/// The lb directives naming members (`balanced_workers` is the old
/// spelling); both are read, so both must be looked at everywhere.
pub(super) const BALANCE_LISTS: [&str; 2] = ["balance_workers", "balanced_workers"];

/// One worker directive, with where it was written: `owner` is the worker
/// whose line it is (the template, when inherited).
#[derive(Debug, Clone)]
pub(super) struct Setting {
    /// The value as written (list directives joined with `,`).
    pub(super) value: String,
    /// 1-based line in the workers file, for messages and notes.
    pub(super) line: usize,
    /// The worker whose line it is, to name the key as written.
    pub(super) owner: String,
}

impl Setting {
    /// The first letter, upper-cased: mod_jk reads one-letter choices
    /// (`method`, `activation`) by it, so `Request` and `r` both mean R.
    pub(super) fn initial(&self) -> Option<char> {
        self.value
            .trim()
            .chars()
            .next()
            .map(|c| c.to_ascii_uppercase())
    }
}

/// One worker's directives by name (`host`, `port`, ...), sorted so
/// output does not depend on hashing.
pub(super) type Settings = BTreeMap<String, Setting>;

/// An [`ImportError::Setting`] blaming `worker.OWNER.dir` where `s` is
/// written: the template's line when the value is inherited.
pub(super) fn setting_error(
    file: &Path,
    dir: &str,
    s: &Setting,
    problem: impl Into<String>,
) -> ImportError {
    ImportError::Setting {
        file: file.to_path_buf(),
        line: s.line,
        key: format!("worker.{}.{}", s.owner, dir),
        value: s.value.clone(),
        problem: problem.into(),
    }
}

/// `workers.properties` grouped by worker, references resolved.
pub(super) struct Model {
    /// `worker.list` entries, in order, with their line.
    pub(super) list: Vec<(String, usize)>,
    /// Whether `worker.list` appears at all.
    pub(super) has_list: bool,
    /// Worker names in order of first appearance.
    pub(super) order: Vec<String>,
    /// Each worker's settings, inherited ones included.
    pub(super) workers: HashMap<String, Settings>,
    /// Workers some other worker references (templates).
    pub(super) templates: HashSet<String>,
    /// `worker.X=...` keys other than `worker.list`.
    pub(super) globals: Vec<Property>,
    /// Keys outside `worker.` that no `$(...)` used.
    pub(super) loose: Vec<Property>,
}

impl Model {
    /// Group parsed properties by worker and resolve references; keys that
    /// are not worker settings are kept so they can be noted, not lost.
    pub(super) fn build(file: &Path, props: Properties) -> Result<Model, ImportError> {
        let mut list = Vec::new();
        let mut has_list = false;
        let mut order = Vec::new();
        let mut own: HashMap<String, Settings> = HashMap::new();
        let mut globals = Vec::new();
        let mut loose = Vec::new();
        for e in props.entries {
            let Some(rest) = e.key.strip_prefix("worker.") else {
                if !props.referenced.contains(&e.key) {
                    loose.push(e);
                }
                continue;
            };
            match rest.rsplit_once('.') {
                None if rest == "list" => {
                    has_list = true;
                    list.extend(split_list(&e.value).map(|n| (n.to_owned(), e.line)));
                }
                None if rest.is_empty() => {
                    return Err(malformed_key(file, &e));
                }
                None => globals.push(e),
                Some((name, dir)) if name.is_empty() || dir.is_empty() => {
                    return Err(malformed_key(file, &e));
                }
                Some((name, dir)) => {
                    if !own.contains_key(name) {
                        order.push(name.to_owned());
                    }
                    let map = own.entry(name.to_owned()).or_default();
                    match map.get_mut(dir) {
                        Some(s) if LIST_DIRECTIVES.contains(&dir) => {
                            s.value.push(',');
                            s.value.push_str(&e.value);
                        }
                        _ => {
                            map.insert(
                                dir.to_owned(),
                                Setting {
                                    value: e.value,
                                    line: e.line,
                                    owner: name.to_owned(),
                                },
                            );
                        }
                    }
                }
            }
        }
        let mut workers = HashMap::new();
        let mut templates = HashSet::new();
        for name in &order {
            let s = resolve(file, name, &own, 0, &mut templates)?;
            workers.insert(name.clone(), s);
        }
        Ok(Model {
            list,
            has_list,
            order,
            workers,
            templates,
            globals,
            loose,
        })
    }

    /// A worker's settings; an undefined worker has none (mod_jk then uses
    /// its defaults).
    pub(super) fn get(&self, name: &str) -> &Settings {
        static EMPTY: Settings = BTreeMap::new();
        self.workers.get(name).unwrap_or(&EMPTY)
    }

    /// Whether `worker.list` names the worker (mod_jk only serves listed
    /// workers directly).
    pub(super) fn listed(&self, name: &str) -> bool {
        self.list.iter().any(|(n, _)| n == name)
    }

    /// Line to blame for a worker as a whole: its first own setting, else
    /// where `worker.list` names it.
    pub(super) fn line_of(&self, name: &str) -> Option<usize> {
        self.get(name)
            .values()
            .filter(|s| s.owner == name)
            .map(|s| s.line)
            .min()
            .or_else(|| self.list.iter().find(|(n, _)| n == name).map(|(_, l)| *l))
    }
}

/// A `worker.` key that is not `worker.NAME.DIRECTIVE`.
fn malformed_key(file: &Path, e: &Property) -> ImportError {
    syntax(
        file,
        e.line,
        format!(
            "malformed key {:?}; worker settings are worker.NAME.DIRECTIVE (or worker.list)",
            properties::snippet(&e.key)
        ),
    )
}

/// A worker's own settings plus those of the worker it references
/// (`worker.NAME.reference=worker.TEMPLATE`), its own winning.
fn resolve(
    file: &Path,
    name: &str,
    own: &HashMap<String, Settings>,
    depth: usize,
    templates: &mut HashSet<String>,
) -> Result<Settings, ImportError> {
    let mut mine = own.get(name).cloned().unwrap_or_default();
    let Some(r) = mine.get("reference").cloned() else {
        return Ok(mine);
    };
    let bad = |problem: String| setting_error(file, "reference", &r, problem);
    if depth >= MAX_REFERENCE_DEPTH {
        return Err(bad(format!(
            "reference chain deeper than {MAX_REFERENCE_DEPTH} or circular; make the template reference no worker that leads back to it"
        )));
    }
    let target = r.value.strip_prefix("worker.").unwrap_or(&r.value).trim();
    if !own.contains_key(target) {
        return Err(bad(format!(
            "no worker {target:?} is defined in this file; define worker.{target}.* settings or remove the reference"
        )));
    }
    templates.insert(target.to_owned());
    let base = resolve(file, target, own, depth + 1, templates)?;
    for (k, v) in base {
        if k != "reference" {
            mine.entry(k).or_insert(v);
        }
    }
    Ok(mine)
}

/// Comma (or whitespace) separated names, as mod_jk splits lists.
pub(super) fn split_list(v: &str) -> impl Iterator<Item = &str> {
    v.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|s| !s.is_empty())
}

/// mod_jk worker types this importer distinguishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum WorkerKind {
    /// A load balancer: its members become the backends.
    Lb,
    /// The default type.
    Ajp13,
    /// AJP 1.4 (default port 8011).
    Ajp14,
    /// mod_jk's HTTP worker (default port 80).
    Http,
    /// The status page worker.
    Status,
    /// Any other type (`jni`, misspellings, ...).
    Other,
}

impl WorkerKind {
    /// Whether a worker of this type talks to one Tomcat node, so it can
    /// become a `[[backend]]`.
    pub(super) fn is_node(self) -> bool {
        matches!(
            self,
            WorkerKind::Ajp13 | WorkerKind::Ajp14 | WorkerKind::Http
        )
    }
}

/// A worker's type; no `type` means ajp13, as in mod_jk.
pub(super) fn kind(s: &Settings) -> WorkerKind {
    match s.get("type").map(|t| t.value.trim().to_ascii_lowercase()) {
        None => WorkerKind::Ajp13,
        Some(t) => match t.as_str() {
            "lb" => WorkerKind::Lb,
            "ajp13" => WorkerKind::Ajp13,
            "ajp14" => WorkerKind::Ajp14,
            "http" => WorkerKind::Http,
            "status" => WorkerKind::Status,
            _ => WorkerKind::Other,
        },
    }
}

#[cfg(test)]
mod tests {
    use crate::import::tests::{backends, has_note, import, table};

    #[test]
    fn template_reference_is_inherited_and_overridden() {
        let out = import(
            "worker.tpl.type=ajp13\nworker.tpl.lbfactor=3\nworker.tpl.domain=d1\n\
             worker.lb.type=lb\nworker.lb.balance_workers=a,b\n\
             worker.a.reference=worker.tpl\nworker.a.host=h1\n\
             worker.b.reference=tpl\nworker.b.host=h2\nworker.b.lbfactor=1\n",
            None,
            None,
        )
        .unwrap();
        let t = table(&out);
        let b = backends(&t);
        assert_eq!(b[0]["weight"].as_integer(), Some(3));
        assert_eq!(b[1]["weight"].as_integer(), Some(1));
        assert_eq!(b[1]["domain"].as_str(), Some("d1"));
        // The template is not reported as an unused worker.
        assert!(!has_note(&out, "worker tpl"), "{:#?}", out.notes);
    }
}

//! `stickgate import modjk`: turn an Apache mod_jk setup
//! (`workers.properties`, optionally `uriworkermap.properties`) into a
//! stickgate configuration.
//!
//! The point is a migration that hides nothing: every mod_jk setting either
//! becomes a stickgate key or a `# not carried over: ...` line (a [`Note`])
//! saying why and what to do instead. The generated text is checked with
//! the same validation `stickgate check` runs before it is returned, so a
//! successful import is always a loadable configuration.
//!
//! Mapping rules (mod_jk reference: tomcat.apache.org/connectors-doc,
//! `workers.properties` and `uriworkermap.properties`):
//! - one `lb` worker becomes the `[[backend]]` list (the first in
//!   `worker.list`, or the one asked for); other lb workers are noted;
//! - member `route`/`jvm_route` (default: the worker name) -> `route`,
//!   `lbfactor` -> `weight`, `domain` -> `domain`, `activation`
//!   (or old `disabled`/`stopped`) -> `state`;
//! - AJP `host:port` -> `url = "ajp://host:port"` (stickgate speaks
//!   AJP/1.3 to the same connector mod_jk used), with `ping_mode` (the
//!   letters as a list), `ping_timeout`, `max_packet_size` and `secret`
//!   (-> `ajp_secret`) per backend;
//! - per-worker timeouts -> the global `[upstream]` ones (the largest);
//! - lb `method` -> `[balance] algorithm`, `session_cookie`/`session_path`
//!   -> `[session]`, `retries` -> `[upstream] retries`, `recover_time` ->
//!   `[health] probe_backoff`; interval CPing -> active `[health]` checks
//!   (CPing for those backends).
//!
//! One module per step: [`properties`] parses the files, `model` groups
//! settings by worker, `plan` (with `member` and `globals`) maps the chosen
//! worker, `mounts` and `others` note what is left, `render` writes the
//! TOML; `notes` is the context every step reports through.

mod globals;
mod member;
mod model;
mod mounts;
mod notes;
mod others;
mod plan;
pub mod properties;
mod render;
#[cfg(test)]
mod tests;

use model::Model;
use notes::Cx;
use std::fmt;
use std::path::{Path, PathBuf};

/// Why an import failed. The `Display` form is one line naming the file
/// (and line, when there is one), the problem and what to do, as the
/// command prints it before exiting with status 1.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// An input file could not be read at all.
    #[error("{}: cannot read: {source} (check the path and its permissions)", file.display())]
    Read {
        /// The file as given on the command line.
        file: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// A line is not properties syntax (`key=value`, comment or blank).
    #[error("{}:{line}: {problem}", file.display())]
    Syntax {
        /// The file holding the line.
        file: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong and how to fix it.
        problem: String,
    },
    /// A setting parses but its value cannot be used (not a number, an
    /// unknown activation, a route stickgate cannot route by, ...).
    #[error("{}:{line}: {key}={value:?}: {problem}", file.display())]
    Setting {
        /// The file holding the setting.
        file: PathBuf,
        /// 1-based line of the setting (of the template, when inherited).
        line: usize,
        /// Full property key, e.g. `worker.node1.port`.
        key: String,
        /// The value as written.
        value: String,
        /// What is wrong and how to fix it.
        problem: String,
    },
    /// The file as a whole gives nothing to import (no lb or ajp13 worker,
    /// or `--worker` names an unknown one).
    #[error("{}: {problem}", file.display())]
    Unusable {
        /// The workers file.
        file: PathBuf,
        /// What is missing and how to fix it.
        problem: String,
    },
    /// The generated configuration failed stickgate's own validation: a bug
    /// in the importer, reported instead of printing a broken file.
    #[error("the generated configuration does not pass `stickgate check` ({problem}); this is an importer bug, please report it with the input files")]
    Generated {
        /// The validation error.
        problem: String,
    },
}

/// An [`ImportError::Syntax`] at `file:line`: one constructor for the
/// properties parser and the mapping, which both blame whole lines.
fn syntax(file: &Path, line: usize, problem: impl Into<String>) -> ImportError {
    ImportError::Syntax {
        file: file.to_path_buf(),
        line,
        problem: problem.into(),
    }
}

/// A mod_jk setting (or mount, or worker) that has no stickgate equivalent
/// or only an approximate one. Printed as a `# not carried over: ...`
/// comment in the output and as a warning on stderr, so nothing is dropped
/// silently during a migration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// Where the setting is written, when it is one line.
    pub at: Option<(PathBuf, usize)>,
    /// The setting or object concerned, e.g. `worker.node1.redirect=node2`.
    pub what: String,
    /// Why it is not carried over and what to do instead.
    pub why: String,
}

impl fmt::Display for Note {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match &self.at {
            Some((file, line)) => format!(
                "not carried over: {} ({}:{}): {}",
                self.what,
                file.display(),
                line,
                self.why
            ),
            None => format!("not carried over: {}: {}", self.what, self.why),
        };
        f.write_str(&render::one_line(&text))
    }
}

/// The result of an import: the configuration text and everything that
/// did not make it into it.
#[derive(Debug, Clone)]
pub struct Imported {
    /// A complete stickgate TOML configuration, already validated; the
    /// notes are included in it as comments.
    pub toml: String,
    /// The same notes as data, for the caller to print as warnings.
    pub notes: Vec<Note>,
}

/// An input file already in memory: its name (for messages and the header
/// comment) and its text. Lets tests and callers import without touching
/// the file system.
#[derive(Debug, Clone, Copy)]
pub struct InputFile<'a> {
    /// Name used in messages.
    pub path: &'a Path,
    /// The file's contents.
    pub text: &'a str,
}

/// Read the files and import them; see [`modjk_from_str`].
///
/// Files are decoded leniently (invalid UTF-8 becomes U+FFFD) because
/// mod_jk files often carry Latin-1 comments and only ASCII matters here.
pub fn import_modjk(
    workers: &Path,
    uriworkermap: Option<&Path>,
    worker: Option<&str>,
) -> Result<Imported, ImportError> {
    let read = |p: &Path| {
        std::fs::read(p)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .map_err(|source| ImportError::Read {
                file: p.to_path_buf(),
                source,
            })
    };
    let workers_text = read(workers)?;
    let uwm_text = uriworkermap.map(read).transpose()?;
    modjk_from_str(
        InputFile {
            path: workers,
            text: &workers_text,
        },
        uriworkermap
            .zip(uwm_text.as_deref())
            .map(|(path, text)| InputFile { path, text }),
        worker,
    )
}

/// Import mod_jk configuration text. `worker` picks the lb (or single
/// ajp13) worker to import; by default the first lb worker of
/// `worker.list`.
///
/// Never panics on any input: bad input is an [`ImportError`].
pub fn modjk_from_str(
    workers: InputFile<'_>,
    uriworkermap: Option<InputFile<'_>>,
    worker: Option<&str>,
) -> Result<Imported, ImportError> {
    let props = properties::parse(workers.path, workers.text)?;
    let uwm = match uriworkermap {
        Some(u) => Some((u.path, properties::parse(u.path, u.text)?)),
        None => None,
    };
    let model = Model::build(workers.path, props)?;
    let mut cx = Cx::new(workers.path);
    let plan = plan::plan(&mut cx, &model, worker)?;
    let mounts = mounts::mounts(&mut cx, &model, &plan, uwm.as_ref().map(|(p, m)| (*p, m)))?;
    others::other_workers(&mut cx, &model, &plan);
    let mut notes = cx.notes;
    notes::sort_notes(&mut notes, workers.path);
    let toml = render::render(
        workers.path,
        uwm.as_ref().map(|u| u.0),
        &plan,
        &mounts,
        &notes,
    );
    crate::config::from_str(&toml, Path::new("imported.toml")).map_err(|e| {
        ImportError::Generated {
            problem: e.to_string(),
        }
    })?;
    Ok(Imported { toml, notes })
}

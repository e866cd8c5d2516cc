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

mod error;
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
mod text;

pub use error::ImportError;
use model::Model;
use notes::Cx;
pub use notes::Note;
use std::path::Path;

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

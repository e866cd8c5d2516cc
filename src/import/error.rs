//! Why an import fails: one error type for the parser and the mapping,
//! below every step so each can return it without importing the others.

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
pub(super) fn syntax(file: &Path, line: usize, problem: impl Into<String>) -> ImportError {
    ImportError::Syntax {
        file: file.to_path_buf(),
        line,
        problem: problem.into(),
    }
}

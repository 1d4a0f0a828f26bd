//! Diagnostics for config and rules: every problem points at `file:line:column`.
//!
//! Ops read these in a terminal after an edit, so each one names the place, what was
//! wrong there and, where we can guess, what was expected. Compilation collects them
//! all instead of stopping at the first, so one `gatehouse check` shows every mistake.

use std::fmt;
use std::path::{Path, PathBuf};

/// A position in a source file (1-based), or `0:0` when only the file is known.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pos {
    /// 1-based line, 0 when unknown.
    pub line: u64,
    /// 1-based column, 0 when unknown.
    pub column: u64,
}

impl Pos {
    /// Position taken from a YAML span, so errors found after parsing still point at the text.
    pub fn of(loc: &serde_saphyr::Location) -> Self {
        Pos {
            line: loc.line(),
            column: loc.column(),
        }
    }
}

/// One problem found in a config or rules file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file the problem is in.
    pub file: PathBuf,
    /// Where in that file.
    pub pos: Pos,
    /// What is wrong, and where (names the rule or key).
    pub message: String,
    /// What was expected, when we can say.
    pub hint: Option<String>,
}

impl Diagnostic {
    /// A problem at a known place.
    pub fn new(file: &Path, pos: Pos, message: impl Into<String>) -> Self {
        Diagnostic {
            file: file.to_path_buf(),
            pos,
            message: message.into(),
            hint: None,
        }
    }

    /// Adds what was expected, shown after the message.
    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// Sets what was expected on a problem already recorded.
    pub fn set_hint(&mut self, hint: impl Into<String>) {
        self.hint = Some(hint.into());
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file.display(),
            self.pos.line,
            self.pos.column,
            self.message
        )?;
        if let Some(hint) = &self.hint {
            write!(f, " (expected {hint})")?;
        }
        Ok(())
    }
}

/// Every problem found in one validation pass, in file order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    /// Records one more problem and carries on.
    pub fn push(&mut self, d: Diagnostic) {
        self.0.push(d);
    }

    /// True when nothing was wrong.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Turns a pass into a result: `Ok(value)` only if nothing was recorded.
    pub fn finish<T>(mut self, value: T) -> Result<T, Diagnostics> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            self.0.sort_by(|a, b| {
                (&a.file, a.pos.line, a.pos.column).cmp(&(&b.file, b.pos.line, b.pos.column))
            });
            self.0.dedup();
            Err(self)
        }
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

impl From<Diagnostic> for Diagnostics {
    fn from(d: Diagnostic) -> Self {
        Diagnostics(vec![d])
    }
}

/// Parses a YAML document into its serde mirror, turning a parse error into a diagnostic.
///
/// Unknown keys, wrong types, duplicate keys and syntax errors all arrive here with a location.
pub fn parse_yaml<T: serde::de::DeserializeOwned>(
    file: &Path,
    text: &str,
) -> Result<T, Diagnostic> {
    let options = serde_saphyr::options! { with_snippet: false };
    serde_saphyr::from_str_with_options::<T>(text, options).map_err(|e| {
        let pos = e.location().map(|l| Pos::of(&l)).unwrap_or_default();
        let message = e.without_snippet().to_string();
        Diagnostic::new(file, pos, clean_message(&message))
    })
}

/// Drops the `at line X, column Y` suffix the YAML crate adds: our prefix already says it.
fn clean_message(msg: &str) -> String {
    let first = msg.lines().next().unwrap_or(msg).trim();
    match first.rfind(" at line ") {
        Some(i) => first[..i].to_string(),
        None => first.to_string(),
    }
}

/// Reads a file, reporting a missing or unreadable file as a diagnostic at the place that named it.
pub fn read_file(path: &Path, named_in: &Path, pos: Pos) -> Result<String, Diagnostic> {
    std::fs::read_to_string(path).map_err(|e| {
        Diagnostic::new(
            named_in,
            pos,
            format!("cannot read {}: {e}", path.display()),
        )
    })
}

//! Manifest diagnostics: every error points at `file:line:column`.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// One problem found in a manifest.
#[derive(Debug, Clone)]
pub struct Diagnostic {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: {}", self.file.display(), self.line, self.column, self.message)
    }
}

/// All problems found in a manifest; nothing runs while there is one.
#[derive(Debug, Clone)]
pub struct ManifestError {
    pub diagnostics: Vec<Diagnostic>,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.diagnostics.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ManifestError {}

/// Turns byte offsets into 1-based line and column (in characters).
pub struct SourceMap<'a> {
    file: &'a Path,
    source: &'a str,
}

impl<'a> SourceMap<'a> {
    pub fn new(file: &'a Path, source: &'a str) -> Self {
        SourceMap { file, source }
    }

    pub fn at(&self, span: Option<Range<usize>>, message: impl Into<String>) -> Diagnostic {
        let offset = span.map(|s| s.start).unwrap_or(0).min(self.source.len());
        let before = &self.source[..floor_char_boundary(self.source, offset)];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map(|l| l.chars().count()).unwrap_or(0) + 1;
        Diagnostic { file: self.file.to_path_buf(), line, column, message: message.into() }
    }
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

//! Errors in definition files, located like rustc does: `file:line:column: message`.

use std::fmt;
use std::ops::Range;

/// One problem in a definition file.
///
/// `line` and `column` are 1-based (columns count characters, not bytes). Problems that concern
/// a whole file (it cannot be read) have `line == 0` and `column == 0`.
///
/// `{}` prints one line; `{:#}` adds the offending source line with a caret under the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefinitionError {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
    /// The source line the error points into, when known.
    pub source_line: Option<String>,
    /// How many characters of `source_line` the caret underlines (at least 1).
    pub width: usize,
}

impl DefinitionError {
    /// An error about the file as a whole, with no position.
    pub fn whole_file(file: &str, message: impl Into<String>) -> Self {
        Self {
            file: file.to_owned(),
            line: 0,
            column: 0,
            message: message.into(),
            source_line: None,
            width: 1,
        }
    }
}

impl fmt::Display for DefinitionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file, self.message)?;
        } else {
            write!(
                f,
                "{}:{}:{}: {}",
                self.file, self.line, self.column, self.message
            )?;
        }
        if let (true, Some(source_line)) = (f.alternate(), &self.source_line) {
            let gutter = " ".repeat(self.line.to_string().len());
            let pad = " ".repeat(self.column.saturating_sub(1));
            let carets = "^".repeat(self.width.max(1));
            write!(
                f,
                "\n{gutter} |\n{} | {source_line}\n{gutter} | {pad}{carets}",
                self.line
            )?;
        }
        Ok(())
    }
}

impl std::error::Error for DefinitionError {}

/// Turns byte offsets in one source file into located errors.
pub(crate) struct SourceMap<'a> {
    file: &'a str,
    source: &'a str,
    /// Byte offset at which each line starts.
    line_starts: Vec<usize>,
}

impl<'a> SourceMap<'a> {
    pub(crate) fn new(file: &'a str, source: &'a str) -> Self {
        let line_starts = std::iter::once(0)
            .chain(source.match_indices('\n').map(|(at, _)| at + 1))
            .collect();
        Self {
            file,
            source,
            line_starts,
        }
    }

    /// 1-based line and column (in characters) of a byte offset.
    pub(crate) fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.source.len());
        let line_index = self
            .line_starts
            .partition_point(|&start| start <= offset)
            .saturating_sub(1);
        let start = self.line_starts.get(line_index).copied().unwrap_or(0);
        let column = self
            .source
            .get(start..offset)
            .map_or(0, |prefix| prefix.chars().count());
        (line_index + 1, column + 1)
    }

    /// An error pointing at `span` (a byte range in the source).
    pub(crate) fn error(&self, span: Range<usize>, message: impl Into<String>) -> DefinitionError {
        let (line, column) = self.line_col(span.start);
        let line_text = self.line_text(line);
        let width = match (&line_text, self.source.get(span.clone())) {
            (Some(text), Some(spanned)) => {
                let available = text.chars().count().saturating_sub(column - 1);
                spanned
                    .lines()
                    .next()
                    .map_or(1, |first| first.chars().count())
                    .min(available)
                    .max(1)
            }
            _ => 1,
        };
        DefinitionError {
            file: self.file.to_owned(),
            line,
            column,
            message: message.into(),
            source_line: line_text,
            width,
        }
    }

    fn line_text(&self, line: usize) -> Option<String> {
        let start = *self.line_starts.get(line.checked_sub(1)?)?;
        let rest = self.source.get(start..)?;
        let text = rest.split('\n').next().unwrap_or(rest);
        Some(text.trim_end_matches('\r').to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_map_to_one_based_lines_and_character_columns() {
        let map = SourceMap::new("f.toml", "a = 1\nname = \"é x\"\n");
        assert_eq!(map.line_col(0), (1, 1));
        assert_eq!(map.line_col(4), (1, 5));
        assert_eq!(map.line_col(6), (2, 1));
        // `x` sits after the two-byte `é`: byte 17, character column 11.
        assert_eq!(map.line_col(17), (2, 11));
        assert_eq!(map.line_col(999), (3, 1));
    }

    #[test]
    fn display_is_rustc_like_with_an_optional_snippet() {
        let map = SourceMap::new(
            "sagas/x.toml",
            "name = \"x\"\naction = \"payment.authorise\"\n",
        );
        let error = map.error(9 + 11..28 + 11, "unknown action");
        assert_eq!(error.to_string(), "sagas/x.toml:2:10: unknown action");
        assert_eq!(
            format!("{error:#}"),
            "sagas/x.toml:2:10: unknown action\n  |\n2 | action = \"payment.authorise\"\n  |          ^^^^^^^^^^^^^^^^^^^"
        );
        assert_eq!(
            DefinitionError::whole_file("sagas/y.toml", "cannot read").to_string(),
            "sagas/y.toml: cannot read"
        );
    }
}

//! Stage 1, first half: is the text TOML, and does it only use kechi's keys?
//!
//! This runs before serde so that every unknown key is reported at once (serde stops at the
//! first), each with its line, the key, and a "did you mean" when a valid key is close. Of
//! syntax errors only the earliest is reported: what follows one is the parser's guesswork. It also records the line of every key, which validation uses for
//! problems inside `environment` (serde only gives the span of the whole table).

use std::collections::BTreeMap;
use std::path::Path;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::error::{ConfigError, ErrorKind, Location};
use super::keys::{KEYS, SECTIONS, suggest_key};
use super::lines::LineIndex;

/// Line of every key in the file, by dotted path (`memory.max`, `environment.PLACK_ENV`).
pub type KeyLines = BTreeMap<String, usize>;

/// What the shape check found in a file that is valid TOML: the line of every key, and the
/// problems of shape (unknown keys, sections that are not tables), in line order. These do not
/// stop the later stages: the rest of the file is still read and checked, so one run reports
/// every problem.
#[derive(Debug, Default)]
pub struct Shape {
    pub key_lines: KeyLines,
    pub problems: Vec<ConfigError>,
}

/// Parses `text` and checks that it only uses known keys and tables where tables belong.
/// `Err` only when the text is not TOML at all (then nothing else can be read).
pub fn check(text: &str, path: &Path, lines: &LineIndex) -> Result<Shape, Vec<ConfigError>> {
    // Only the first syntax error is reported: after one, recovery guesses, and the guesses
    // (an unclosed array swallowing the next lines...) would only mislead.
    // Errors are not reported in text order, so take the earliest.
    let (doc, syntax) = DeTable::parse_recoverable(text);
    if let Some(first) = syntax
        .iter()
        .min_by_key(|e| e.span().map_or(usize::MAX, |s| s.start))
    {
        return Err(vec![from_toml_error(first, text, path, lines)]);
    }
    let mut walk = Walk {
        path,
        lines,
        key_lines: KeyLines::new(),
        errors: Vec::new(),
    };
    walk.table("", doc.get_ref());
    // The tree is sorted by key, not by position; users read top to bottom.
    walk.errors.sort_by(|a, b| a.location.cmp(&b.location));
    Ok(Shape {
        key_lines: walk.key_lines,
        problems: walk.errors,
    })
}

struct Walk<'a> {
    path: &'a Path,
    lines: &'a LineIndex,
    key_lines: KeyLines,
    errors: Vec<ConfigError>,
}

impl Walk<'_> {
    fn at(&self, offset: usize) -> Location {
        Location::File {
            path: self.path.to_owned(),
            line: Some(self.lines.line(offset)),
        }
    }

    /// `prefix` is `""` at the top level, else the section name.
    fn table(&mut self, prefix: &str, table: &DeTable<'_>) {
        for (key, value) in table.iter() {
            let name: &str = key.get_ref();
            let dotted = if prefix.is_empty() {
                name.to_owned()
            } else {
                format!("{prefix}.{name}")
            };
            let line = self.lines.line(key.span().start);
            self.key_lines.insert(dotted.clone(), line);
            if prefix.is_empty() && SECTIONS.contains(&name) {
                self.section(&dotted, key, value);
            } else if prefix.is_empty() && name == "environment" {
                // Free-form names; record their lines. A non-table is a type error for later.
                if let DeValue::Table(vars) = value.get_ref() {
                    for (var, _) in vars.iter() {
                        let line = self.lines.line(var.span().start);
                        self.key_lines
                            .insert(format!("environment.{}", var.get_ref()), line);
                    }
                }
            } else if !KEYS.contains(&dotted.as_str()) {
                self.unknown(&dotted, prefix, key.span().start);
            }
        }
    }

    fn section(
        &mut self,
        name: &str,
        key: &Spanned<std::borrow::Cow<'_, str>>,
        value: &Spanned<DeValue<'_>>,
    ) {
        match value.get_ref() {
            DeValue::Table(t) => self.table(name, t),
            other => self.errors.push(
                ConfigError::new(
                    ErrorKind::Syntax,
                    self.at(key.span().start),
                    format!("got {} {}", article(other.type_str()), other.type_str()),
                )
                .key(name)
                .expected(format!("a table: a [{name}] section")),
            ),
        }
    }

    fn unknown(&mut self, dotted: &str, prefix: &str, offset: usize) {
        let mut e = ConfigError::new(ErrorKind::Syntax, self.at(offset), "unknown key").key(dotted);
        match suggest_key(dotted) {
            Some(s) => e.message = format!("unknown key; did you mean {s}?"),
            None if prefix.is_empty() => {
                e = e.expected(format!(
                    "one of the top-level keys ({}) or a section ({})",
                    KEYS.iter()
                        .filter(|k| !k.contains('.'))
                        .copied()
                        .collect::<Vec<_>>()
                        .join(", "),
                    SECTIONS
                        .iter()
                        .map(|s| format!("[{s}]"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            }
            None => {
                let keys: Vec<&str> = KEYS
                    .iter()
                    .filter_map(|k| k.strip_prefix(prefix)?.strip_prefix('.'))
                    .collect();
                e = e.expected(format!(
                    "one of the keys of [{prefix}]: {}",
                    keys.join(", ")
                ));
            }
        }
        self.errors.push(e);
    }
}

fn article(word: &str) -> &'static str {
    if word.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    }
}

/// A toml error (syntax, or a shape problem serde found) as a located [`ConfigError`].
pub fn from_toml_error(
    e: &toml::de::Error,
    text: &str,
    path: &Path,
    lines: &LineIndex,
) -> ConfigError {
    let line = e.span().map(|s| lines.line(s.start));
    let mut err = ConfigError::new(
        ErrorKind::Syntax,
        Location::File {
            path: path.to_owned(),
            line,
        },
        format!("invalid TOML: {}", e.message().trim()),
    );
    if let Some(key) = line.and_then(|l| key_at_line(text, l)) {
        err = err.key(key);
    }
    err
}

/// Best guess of the dotted key written on 1-based line `line`, from the raw text (used when
/// the text is not valid TOML, so there is no tree to ask).
pub fn key_at_line(text: &str, line: usize) -> Option<String> {
    let all: Vec<&str> = text.lines().collect();
    let here = all.get(line.checked_sub(1)?)?.trim();
    let header = |l: &str| -> Option<String> {
        let inner = l.strip_prefix('[')?.split(']').next()?;
        Some(inner.trim_matches(['[', ' ']).to_owned())
    };
    if here.starts_with('[') {
        return header(here);
    }
    let (key, _) = here.split_once('=')?;
    let key = key.trim().trim_matches(['"', '\'']).to_owned();
    if key.is_empty() || key.contains(char::is_whitespace) {
        return None;
    }
    let section = all[..line - 1]
        .iter()
        .rev()
        .map(|l| l.trim())
        .find(|l| l.starts_with('['))
        .and_then(header);
    Some(match section {
        Some(s) => format!("{s}.{key}"),
        None => key,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(text: &str) -> Result<KeyLines, Vec<String>> {
        let lines = LineIndex::new(text);
        let msgs = |es: &[ConfigError]| es.iter().map(ToString::to_string).collect();
        match check(text, Path::new("t.toml"), &lines) {
            Err(es) => Err(msgs(&es)),
            Ok(shape) if !shape.problems.is_empty() => Err(msgs(&shape.problems)),
            Ok(shape) => Ok(shape.key_lines),
        }
    }

    #[test]
    fn all_unknown_keys_at_once() {
        let errs = run("comand = []\n[memory]\nmaxx = \"1G\"\nhigh = \"1G\"\n[bogus]\nx = 1\n")
            .unwrap_err();
        assert_eq!(
            errs,
            [
                "t.toml:1: comand: unknown key; did you mean command?",
                "t.toml:3: memory.maxx: unknown key; did you mean memory.max?",
                "t.toml:5: bogus: unknown key; expected one of the top-level keys (command, directory, user, group, workers, environment, listen) or a section ([ready], [stop], [memory], [recycle], [restart], [jemalloc], [tmpdir], [control], [idle])",
            ]
        );
    }

    #[test]
    fn unknown_key_in_section_lists_valid_ones() {
        let errs = run("[tmpdir]\nzzzzzz = 1\n").unwrap_err();
        assert_eq!(
            errs,
            [
                "t.toml:2: tmpdir.zzzzzz: unknown key; expected one of the keys of [tmpdir]: enabled, size"
            ]
        );
    }

    #[test]
    fn section_must_be_a_table() {
        let errs = run("ready = 5\n").unwrap_err();
        assert_eq!(
            errs,
            ["t.toml:1: ready: got an integer; expected a table: a [ready] section"]
        );
    }

    #[test]
    fn syntax_errors_have_line_and_key() {
        let errs = run("workers = 2\n[memory]\nmax = \"512M\n").unwrap_err();
        assert!(
            errs[0].starts_with("t.toml:3: memory.max: invalid TOML:"),
            "{errs:?}"
        );
        let errs = run("workers = 2\nworkers = 3\n").unwrap_err();
        assert!(
            errs[0].starts_with("t.toml:2: workers: invalid TOML:"),
            "{errs:?}"
        );
    }

    #[test]
    fn records_lines() {
        let lines =
            run("workers = 2\n\n[environment]\nA = \"1\"\nB = \"2\"\n[memory]\nmax = 1\n").unwrap();
        assert_eq!(lines["workers"], 1);
        assert_eq!(lines["environment.B"], 5);
        assert_eq!(lines["memory.max"], 7);
        let lines = run("memory.max = 1\nenvironment = { A = \"1\" }\n").unwrap();
        assert_eq!(lines["memory.max"], 1);
        assert_eq!(lines["environment.A"], 2);
    }

    #[test]
    fn guesses_keys_on_broken_lines() {
        let t = "a = 1\n[ready]\nmode = \"x\n[[x.y]]\n";
        assert_eq!(key_at_line(t, 1).as_deref(), Some("a"));
        assert_eq!(key_at_line(t, 3).as_deref(), Some("ready.mode"));
        assert_eq!(key_at_line(t, 4).as_deref(), Some("x.y"));
        assert_eq!(key_at_line(t, 9), None);
    }
}

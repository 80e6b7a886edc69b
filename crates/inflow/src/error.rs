//! The library's error type: every variant names the file, line or tensor at fault.

use std::path::PathBuf;

/// Errors raised by the inflow library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O failure on a named file.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Malformed input data: file, 1-based line (or row; 0 when the fault is the file as a
    /// whole, and then no line is printed) and what was expected.
    #[error("{}", at_line(path, *line, msg))]
    BadInput {
        path: PathBuf,
        line: usize,
        msg: String,
    },
    /// A model file that cannot be used: file and the tensor or key at fault.
    #[error("model {path}: {msg}")]
    Model { path: PathBuf, msg: String },
    /// A store that does not match what the command expects.
    #[error("store {path}: {msg}")]
    Store { path: PathBuf, msg: String },
    /// A tensor operation failed (the message without the backtrace candle may attach).
    #[error("tensor op: {}", first_line(.0))]
    Candle(#[from] candle_core::Error),
    /// A Parquet or Arrow failure on a named file.
    #[error("{path}: parquet: {msg}")]
    Parquet { path: PathBuf, msg: String },
    /// An experiment's fine-tuned model did not learn the behaviour the experiment is about
    /// (`eval planted`'s attack-success gate): the share of held-out answers that showed it.
    #[error("{msg}")]
    NotLearned { attack_success: f64, msg: String },
    /// Anything else, with a message that says what was expected.
    #[error("{0}")]
    Msg(String),
}

/// `path:line: msg`, or `path: msg` for line 0 (the whole file).
fn at_line(path: &std::path::Path, line: usize, msg: &str) -> String {
    match line {
        0 => format!("{}: {msg}", path.display()),
        l => format!("{}:{l}: {msg}", path.display()),
    }
}

/// An error's message up to its first line break: candle appends a captured backtrace after
/// one, which is noise to a user.
fn first_line(e: &impl std::fmt::Display) -> String {
    let text = e.to_string();
    text.lines()
        .next()
        .unwrap_or_default()
        .trim_end()
        .to_string()
}

/// Result alias for the inflow library.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Wraps an I/O error with the path it happened on.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

/// The error for a name that is none of `names`: "unknown {what} `{name}`; expected {expected}",
/// where `expected` defaults to the names as a list ("a, b or c").
pub fn unknown_name(what: &str, name: &str, names: &[&str], expected: Option<&str>) -> Error {
    let list = match names {
        [] => String::new(),
        [one] => one.to_string(),
        [rest @ .., last] => format!("{} or {last}", rest.join(", ")),
    };
    Error::Msg(format!(
        "unknown {what} `{name}`; expected {}",
        expected.unwrap_or(&list)
    ))
}

/// `FromStr` and `Display` for an enum of unit variants chosen by name (on the command line,
/// in a file): each variant's name is written once, and an unknown name is refused listing
/// them ([`unknown_name`]), or with the text after `expected`:
///
/// ```ignore
/// names!(Template: "template", Auto = "auto", Chat = "chat", Plain = "plain");
/// // "unknown template `x`; expected auto, chat or plain"
/// ```
macro_rules! names {
    ($t:ty: $what:literal, $($v:ident = $name:literal),+ $(; expected $expected:literal)?) => {
        impl std::str::FromStr for $t {
            type Err = $crate::Error;
            fn from_str(s: &str) -> $crate::Result<Self> {
                match s {
                    $($name => Ok(Self::$v),)+
                    _ => Err($crate::error::unknown_name(
                        $what,
                        s,
                        &[$($name),+],
                        None$(.or(Some($expected)))?,
                    )),
                }
            }
        }

        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(match self {
                    $(Self::$v => $name,)+
                })
            }
        }
    };
}
pub(crate) use names;

#[cfg(test)]
mod tests {
    use super::unknown_name;

    #[test]
    fn unknown_names_are_refused_with_the_list() {
        let e = |names: &[&str]| unknown_name("kind", "x", names, None).to_string();
        assert_eq!(e(&["a"]), "unknown kind `x`; expected a");
        assert_eq!(e(&["a", "b"]), "unknown kind `x`; expected a or b");
        assert_eq!(e(&["a", "b", "c"]), "unknown kind `x`; expected a, b or c");
        let custom = unknown_name("kind", "x", &["a"], Some("a (the only one)"));
        assert_eq!(
            custom.to_string(),
            "unknown kind `x`; expected a (the only one)"
        );
        let t: crate::data::tokens::Template = "plain".parse().unwrap();
        assert_eq!(t.to_string(), "plain");
        let err = "start"
            .parse::<crate::data::tokens::Truncate>()
            .unwrap_err();
        assert!(err
            .to_string()
            .starts_with("unknown truncation `start`; expected left (cut"));
    }
}

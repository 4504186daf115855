//! The `.dl` model language: grammar (pest), syntax tree with spans, a parser that
//! recovers at the next top-level item, and compiler-style diagnostics.
//!
//! Name resolution and shape checking need the op table and live in `dlc-compiler`.

pub mod ast;
pub mod diag;
pub mod parser;

pub use diag::{Diagnostic, Source, nearest};
pub use parser::{
    MAX_EXPR_DEPTH, MAX_FILE_BYTES, MAX_NESTING, PRELUDE_BASE, check_text, parse_file,
    parse_file_at,
};

/// The standard library of layers and losses, written in the language itself and loaded
/// before every user file.
pub const PRELUDE: &str = include_str!("prelude.dl");

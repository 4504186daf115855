//! The crate's single error type.

use std::fmt;

/// Why a data set or a tensor file could not be loaded or written.
///
/// The message always names the file involved (or `embedded digits` for the
/// copy compiled into the crate) and, where it helps, the line, column or byte
/// offset. It is meant to be shown to a user as is.
#[derive(Clone, PartialEq, Eq)]
pub struct DataError {
    message: String,
}

impl DataError {
    /// An error with a free-form message. Callers should name the file.
    pub fn new(message: impl Into<String>) -> Self {
        DataError {
            message: message.into(),
        }
    }

    /// An error about `file`: the message reads `"<file>: <detail>"`.
    pub fn in_file(file: &str, detail: impl fmt::Display) -> Self {
        DataError {
            message: format!("{file}: {detail}"),
        }
    }

    /// The full message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for DataError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// Prints the bare message, so `fn main() -> Result<(), DataError>` reads well.
impl fmt::Debug for DataError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for DataError {}

//! Character-level text: the `songs` data set (any UTF-8 text file whose pieces, "tunes",
//! are separated by blank lines, such as the Irish folk tunes in ABC notation).
//!
//! * The vocabulary is the sorted distinct characters (Unicode scalar values) of the
//!   whole file; a character's id is its index in it.
//! * Tunes are the runs of lines between blank lines (empty or whitespace-only lines,
//!   one or more). Tune `i` (0-based) is a test tune when `i % 5 == 4`; with validation,
//!   a validation tune when `i % 5 == 3`; a training tune otherwise.
//! * A split's text is its tunes joined with one blank line (`"\n\n"`), cut into
//!   non-overlapping windows of `seq + 1` characters that share their last character with
//!   the next window: example `i` has `x = ids[i*seq .. i*seq + seq]` and
//!   `y = ids[i*seq + 1 .. i*seq + seq + 1]` (the next character at every position). A
//!   final window that cannot be filled is dropped.

use std::path::Path;

use crate::source::{label, read_file, text};
use crate::split::modulo5;
use crate::{DataError, Dataset, Split, Task};

/// The window length when the file or the command line does not give one.
pub(crate) const DEFAULT_SEQ: usize = 100;
/// The longest window accepted.
pub(crate) const MAX_SEQ: usize = 1 << 20;

/// Read a text file (gzip is decompressed by content) and check that it holds a tune.
fn read_text(path: &Path) -> Result<(String, String), DataError> {
    let file = label(path);
    let bytes = read_file(path)?;
    if bytes.is_empty() {
        return Err(DataError::in_file(
            &file,
            "empty file: expected text with tunes separated by blank lines",
        ));
    }
    let body = text(&file, bytes)?;
    if body.trim().is_empty() {
        return Err(DataError::in_file(
            &file,
            "no tune: the file holds only blank lines",
        ));
    }
    Ok((file, body))
}

/// The sorted distinct characters of `text`.
pub(crate) fn vocabulary_of(text: &str) -> Vec<char> {
    let mut chars: Vec<char> = text.chars().collect();
    chars.sort_unstable();
    chars.dedup();
    chars
}

/// The tunes of `text`: runs of non-blank lines (split at `\n`), each joined back with
/// `\n`. A line is blank when it is empty or whitespace only.
pub(crate) fn tunes(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current: Vec<&str> = Vec::new();
    for line in text.split('\n') {
        if line.trim().is_empty() {
            if !current.is_empty() {
                out.push(current.join("\n"));
                current.clear();
            }
        } else {
            current.push(line);
        }
    }
    if !current.is_empty() {
        out.push(current.join("\n"));
    }
    out
}

/// The vocabulary of a text file as the `songs` data set reads it, without building the
/// splits: what a model's `vocab` size needs.
pub fn songs_vocabulary(path: &Path) -> Result<Vec<char>, DataError> {
    let (_, body) = read_text(path)?;
    Ok(vocabulary_of(&body))
}

/// The windows of one split's character ids.
fn windows(ids: &[u32], seq: usize) -> Split {
    let n = ids.len().saturating_sub(1) / seq;
    let mut x = Vec::with_capacity(n * seq);
    let mut y = Vec::with_capacity(n * seq);
    for i in 0..n {
        x.extend(ids[i * seq..i * seq + seq].iter().map(|&c| c as f32));
        y.extend(
            ids[i * seq + 1..i * seq + seq + 1]
                .iter()
                .map(|&c| c as f32),
        );
    }
    Split { x, y, n }
}

/// Load the `songs` data set from a text file, with windows of `seq` characters.
pub(crate) fn load_songs(path: &Path, validation: bool, seq: usize) -> Result<Dataset, DataError> {
    let (file, body) = read_text(path)?;
    let vocab = vocabulary_of(&body);
    let all = tunes(&body);
    let rows = modulo5(all.len(), validation);
    let split = |which: &str, indices: &[usize]| -> Result<Split, DataError> {
        let joined = indices
            .iter()
            .map(|&i| all[i].as_str())
            .collect::<Vec<_>>()
            .join("\n\n");
        let ids: Vec<u32> = joined
            .chars()
            // Every character of the file is in the vocabulary, and it has fewer than
            // 2^24 entries (ids are exact as f32).
            .map(|c| vocab.binary_search(&c).unwrap_or(0) as u32)
            .collect();
        let s = windows(&ids, seq);
        if s.n == 0 {
            let needed = seq + 1;
            return Err(DataError::in_file(
                &file,
                format!(
                    "the {which} split ({} of the file's {} tunes, {} characters) is shorter than one window of seq + 1 = {needed} characters; use a smaller seq (--data-arg seq=N) or a file with more tunes (every 5th tune is a test tune{})",
                    indices.len(),
                    all.len(),
                    ids.len(),
                    if validation {
                        ", every 5th from the 4th a validation tune"
                    } else {
                        ""
                    }
                ),
            ));
        }
        Ok(s)
    };
    let train = split("training", &rows.train)?;
    let val = match &rows.val {
        Some(v) => Some(split("validation", v)?),
        None => None,
    };
    let test = split("test", &rows.test)?;
    Ok(Dataset {
        name: "songs".to_string(),
        source: label(path),
        task: Task::Classification {
            classes: vocab.len(),
        },
        x_shape: vec![seq],
        y_shape: vec![seq],
        train,
        val,
        test,
        scaling: None,
        vocab: Some(vocab),
        sparse: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tunes_split_at_blank_lines() {
        let t = "a\nb\n\n \t\n\nc\n\r\nd\n";
        assert_eq!(tunes(t), vec!["a\nb", "c", "d"]);
        assert_eq!(tunes("\n\n"), Vec::<String>::new());
        assert_eq!(tunes("x"), vec!["x"]);
    }

    #[test]
    fn windows_overlap_by_one_and_drop_the_rest() {
        let ids: Vec<u32> = (0..10).collect();
        let s = windows(&ids, 3);
        assert_eq!(s.n, 3);
        assert_eq!(s.x, vec![0., 1., 2., 3., 4., 5., 6., 7., 8.]);
        assert_eq!(s.y, vec![1., 2., 3., 4., 5., 6., 7., 8., 9.]);
        assert_eq!(windows(&ids, 9).n, 1);
        assert_eq!(windows(&ids, 10).n, 0);
        assert_eq!(windows(&[], 1).n, 0);
    }
}

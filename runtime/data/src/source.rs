//! Reading files: gzip detection, size limits, UTF-8 text and locating files
//! inside a data folder.

use std::io::{ErrorKind, Read};
use std::path::{Path, PathBuf};

use flate2::read::MultiGzDecoder;

use crate::DataError;

/// Largest decompressed size accepted (guards against gzip bombs): 2 GiB.
pub(crate) const MAX_DECOMPRESSED: u64 = 1 << 31;

/// The first two bytes of every gzip member.
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// How a path is named in error messages.
pub(crate) fn label(path: &Path) -> String {
    path.display().to_string()
}

/// Turn an I/O error on `name` into a [`DataError`].
pub(crate) fn io_error(name: &str, err: &std::io::Error) -> DataError {
    match err.kind() {
        ErrorKind::NotFound => DataError::in_file(name, "file not found"),
        ErrorKind::PermissionDenied => DataError::in_file(name, "permission denied"),
        _ => DataError::in_file(name, format!("cannot read: {err}")),
    }
}

/// Read a whole file, decompressing it when it is gzip (by content; a name
/// ending in `.gz` must then really be gzip).
pub(crate) fn read_file(path: &Path) -> Result<Vec<u8>, DataError> {
    let name = label(path);
    if path.is_dir() {
        return Err(DataError::in_file(&name, "is a folder, expected a file"));
    }
    let bytes = std::fs::read(path).map_err(|e| io_error(&name, &e))?;
    let named_gz = path.extension().is_some_and(|ext| ext == "gz");
    decode(&name, bytes, named_gz)
}

/// Decompress `bytes` if they are gzip, otherwise return them unchanged.
/// `named_gz`: the source claims to be gzip, so plain bytes are an error.
pub(crate) fn decode(name: &str, bytes: Vec<u8>, named_gz: bool) -> Result<Vec<u8>, DataError> {
    if bytes.starts_with(&GZIP_MAGIC) {
        gunzip(name, &bytes)
    } else if named_gz {
        Err(DataError::in_file(
            name,
            "bad gzip: the name ends in .gz but the file does not start with the gzip magic bytes 1f 8b",
        ))
    } else {
        Ok(bytes)
    }
}

/// Decompress a gzip stream (one or more members), refusing more than
/// [`MAX_DECOMPRESSED`] bytes.
fn gunzip(name: &str, bytes: &[u8]) -> Result<Vec<u8>, DataError> {
    let mut out = Vec::new();
    let mut decoder = MultiGzDecoder::new(bytes).take(MAX_DECOMPRESSED + 1);
    decoder
        .read_to_end(&mut out)
        .map_err(|e| DataError::in_file(name, format!("bad gzip data: {e}")))?;
    if out.len() as u64 > MAX_DECOMPRESSED {
        return Err(DataError::in_file(
            name,
            format!("decompresses to more than {MAX_DECOMPRESSED} bytes; refusing to load it"),
        ));
    }
    Ok(out)
}

/// Interpret bytes as UTF-8 text.
pub(crate) fn text(name: &str, bytes: Vec<u8>) -> Result<String, DataError> {
    String::from_utf8(bytes).map_err(|e| {
        let offset = e.utf8_error().valid_up_to();
        DataError::in_file(
            name,
            format!(
                "not UTF-8 text (invalid byte at offset {offset}; wrong file or a compressed file?)"
            ),
        )
    })
}

/// Check that `dir` is an existing folder.
pub(crate) fn require_dir(dir: &Path, expected: &str) -> Result<(), DataError> {
    let name = label(dir);
    if !dir.exists() {
        Err(DataError::in_file(
            &name,
            format!("folder not found (expected a folder with {expected})"),
        ))
    } else if !dir.is_dir() {
        Err(DataError::in_file(
            &name,
            format!("not a folder (expected a folder with {expected})"),
        ))
    } else {
        Ok(())
    }
}

/// The first of `candidates` that exists as a file in `dir`, in order.
pub(crate) fn find_in_dir(dir: &Path, candidates: &[String]) -> Result<PathBuf, DataError> {
    require_dir(dir, &candidates.join(" or "))?;
    candidates
        .iter()
        .map(|candidate| dir.join(candidate))
        .find(|path| path.is_file())
        .ok_or_else(|| {
            DataError::in_file(
                &label(dir),
                format!("missing file: looked for {}", candidates.join(", ")),
            )
        })
}

/// `path` itself when it is a file, otherwise the first of `candidates`
/// found inside the folder `path`.
pub(crate) fn file_or_dir(path: &Path, candidates: &[String]) -> Result<PathBuf, DataError> {
    if path.is_file() {
        Ok(path.to_path_buf())
    } else if path.is_dir() {
        find_in_dir(path, candidates)
    } else {
        Err(DataError::in_file(
            &label(path),
            format!(
                "file or folder not found (expected {} or a folder containing it)",
                candidates.join(" / ")
            ),
        ))
    }
}

/// `base` and `base.gz`, raw first.
pub(crate) fn raw_or_gz(base: &str) -> Vec<String> {
    vec![base.to_string(), format!("{base}.gz")]
}

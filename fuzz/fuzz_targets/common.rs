//! Shared by the fuzz targets: a file per target and process to write inputs to, since
//! dlc reads its inputs from files (the paths, extensions and decompression are part of
//! what is fuzzed).

use std::path::PathBuf;

/// A path in this process's scratch folder (created once).
pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("dlc-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch folder");
    dir.join(name)
}

/// Write `bytes` to `path` (a failure here is the machine's, not dlc's).
pub fn put(path: &std::path::Path, bytes: &[u8]) {
    std::fs::write(path, bytes).expect("write the input");
}

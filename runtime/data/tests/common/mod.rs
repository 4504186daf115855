//! Helpers shared by the integration tests: temporary folders, the location
//! of the reference data, and builders for small IDX files.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// A fresh folder under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// A new empty folder whose name contains `tag`, the pid and a counter.
    pub fn new(tag: &str) -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("dlc-data-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    /// Path of `name` inside the folder.
    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// Write `bytes` to `name` inside the folder and return its path.
    pub fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The shared reference data (`../shared/data` beside the repository; override with
/// `DLC_SHARED_DATA`), or `None`
/// with a printed skip reason when `sub` does not exist there.
pub fn shared(sub: &str) -> Option<PathBuf> {
    let root = std::env::var_os("DLC_SHARED_DATA")
        .map(PathBuf::from)
        // The repository root is two folders above this crate; `shared/` sits beside it.
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data"));
    let path = root.join(sub);
    if path.exists() {
        Some(path)
    } else {
        println!("SKIP: {} does not exist", path.display());
        None
    }
}

/// Gzip `bytes`.
pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

/// An IDX image file: header (magic, n, rows, cols) then `pixels`.
pub fn idx_images(magic: u32, n: u32, rows: u32, cols: u32, pixels: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for v in [magic, n, rows, cols] {
        out.extend(v.to_be_bytes());
    }
    out.extend_from_slice(pixels);
    out
}

/// An IDX label file: header (magic, n) then `labels`.
pub fn idx_labels(magic: u32, n: u32, labels: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend(magic.to_be_bytes());
    out.extend(n.to_be_bytes());
    out.extend_from_slice(labels);
    out
}

/// A valid tiny MNIST-like folder: 6 train and 2 test images of 2x3.
pub fn write_tiny_mnist(dir: &TempDir) {
    let train_px: Vec<u8> = (0..36).map(|i| (i * 7) as u8).collect();
    dir.write(
        "train-images-idx3-ubyte",
        &idx_images(2051, 6, 2, 3, &train_px),
    );
    dir.write(
        "train-labels-idx1-ubyte.gz",
        &gzip(&idx_labels(2049, 6, &[3, 1, 4, 1, 5, 9])),
    );
    dir.write(
        "t10k-images.idx3-ubyte.gz",
        &gzip(&idx_images(2051, 2, 2, 3, &[255; 12])),
    );
    dir.write("t10k-labels.idx1-ubyte", &idx_labels(2049, 2, &[2, 7]));
}

/// Assert that `result` is an error whose message contains every `needle`.
pub fn assert_err<T>(result: Result<T, dlc_data::DataError>, needles: &[&str]) {
    match result {
        Ok(_) => panic!("expected an error containing {needles:?}, got Ok"),
        Err(e) => {
            for needle in needles {
                assert!(
                    e.message().contains(needle),
                    "error {:?} lacks {needle:?}",
                    e.message()
                );
            }
        }
    }
}

/// `path` as a string, for matching in messages.
pub fn s(path: &Path) -> String {
    path.display().to_string()
}

//! IDX files (MNIST, Fashion-MNIST): parsing and the image data set loader.
//!
//! An image file is a 16-byte header (big-endian u32 magic 2051, count, rows,
//! cols) followed by `count * rows * cols` pixel bytes; a label file is an
//! 8-byte header (magic 2049, count) followed by `count` label bytes.

use std::path::Path;

use crate::source::{find_in_dir, label, read_file, require_dir};
use crate::{DataError, Dataset, Split, Task};

/// Magic number of an IDX file of unsigned bytes with 3 dimensions.
pub(crate) const IMAGE_MAGIC: u32 = 0x0803;
/// Magic number of an IDX file of unsigned bytes with 1 dimension.
pub(crate) const LABEL_MAGIC: u32 = 0x0801;
/// Number of classes of MNIST and Fashion-MNIST.
const CLASSES: usize = 10;
/// Size of the validation split carved from the end of the training images.
pub(crate) const MNIST_VALIDATION: usize = 5000;

/// Decoded image file: `n` images of `rows x cols` bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Images {
    /// Number of images.
    pub n: usize,
    /// Pixel rows per image.
    pub rows: usize,
    /// Pixel columns per image.
    pub cols: usize,
    /// `n * rows * cols` pixels.
    pub pixels: Vec<u8>,
}

/// Big-endian u32 at `offset`.
fn be_u32(bytes: &[u8], offset: usize) -> Option<u32> {
    let b = bytes.get(offset..offset.checked_add(4)?)?;
    Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

/// Check the magic number (first, so a wrong kind of file is named as such)
/// and the header length of an IDX file.
fn check_header(
    name: &str,
    bytes: &[u8],
    header: usize,
    magic: u32,
    what: &str,
) -> Result<(), DataError> {
    if let Some(found) = be_u32(bytes, 0).filter(|&found| found != magic) {
        let hint = match found {
            IMAGE_MAGIC => " (this is an IDX image file)",
            LABEL_MAGIC => " (this is an IDX label file)",
            _ => "",
        };
        return Err(DataError::in_file(
            name,
            format!(
                "wrong magic number {found} (0x{found:08x}), expected {magic} (0x{magic:08x}) for an IDX {what} file{hint}"
            ),
        ));
    }
    if bytes.len() < header {
        return Err(DataError::in_file(
            name,
            format!(
                "truncated: {} bytes, but an IDX {what} header alone needs {header}",
                bytes.len()
            ),
        ));
    }
    Ok(())
}

/// Check that the file holds exactly `header + payload` bytes.
fn check_size(
    name: &str,
    len: usize,
    header: usize,
    payload: u128,
    says: &str,
) -> Result<(), DataError> {
    let needed = payload + header as u128;
    let len = len as u128;
    if len < needed {
        Err(DataError::in_file(
            name,
            format!(
                "truncated: the header says {says}, which needs {needed} bytes, but the file has {len}"
            ),
        ))
    } else if len > needed {
        Err(DataError::in_file(
            name,
            format!(
                "{} unexpected bytes after the data: the header says {says} ({needed} bytes), the file has {len}",
                len - needed
            ),
        ))
    } else {
        Ok(())
    }
}

/// Parse an IDX image file (already decompressed). The header counts are
/// checked against the actual length before anything is allocated from them.
pub(crate) fn parse_images(name: &str, mut bytes: Vec<u8>) -> Result<Images, DataError> {
    check_header(name, &bytes, 16, IMAGE_MAGIC, "image")?;
    let field = |offset| be_u32(&bytes, offset).unwrap_or(0) as usize;
    let (n, rows, cols) = (field(4), field(8), field(12));
    if rows == 0 || cols == 0 {
        return Err(DataError::in_file(
            name,
            format!("images of {rows}x{cols} pixels are empty"),
        ));
    }
    let payload = n as u128 * rows as u128 * cols as u128;
    check_size(
        name,
        bytes.len(),
        16,
        payload,
        &format!("{n} images of {rows}x{cols}"),
    )?;
    if n == 0 {
        return Err(DataError::in_file(name, "contains no images (empty data)"));
    }
    bytes.drain(..16);
    Ok(Images {
        n,
        rows,
        cols,
        pixels: bytes,
    })
}

/// Parse an IDX label file (already decompressed); every label must be below
/// `classes`.
pub(crate) fn parse_labels(
    name: &str,
    mut bytes: Vec<u8>,
    classes: usize,
) -> Result<Vec<u8>, DataError> {
    check_header(name, &bytes, 8, LABEL_MAGIC, "label")?;
    let n = be_u32(&bytes, 4).unwrap_or(0) as usize;
    check_size(name, bytes.len(), 8, n as u128, &format!("{n} labels"))?;
    if n == 0 {
        return Err(DataError::in_file(name, "contains no labels (empty data)"));
    }
    bytes.drain(..8);
    if let Some((i, &bad)) = bytes
        .iter()
        .enumerate()
        .find(|&(_, &l)| l as usize >= classes)
    {
        return Err(DataError::in_file(
            name,
            format!(
                "label {bad} of example {i} (byte offset {}) is out of range: expected 0..{}",
                i + 8,
                classes.saturating_sub(1)
            ),
        ));
    }
    Ok(bytes)
}

/// The accepted file names for `prefix` (e.g. `train-images`) and `kind`
/// (e.g. `idx3-ubyte`), in order of preference: raw before gzipped, dashed
/// before dotted.
fn idx_names(prefix: &str, kind: &str) -> Vec<String> {
    vec![
        format!("{prefix}-{kind}"),
        format!("{prefix}-{kind}.gz"),
        format!("{prefix}.{kind}"),
        format!("{prefix}.{kind}.gz"),
    ]
}

/// Load one images + labels pair from `dir` and check they agree.
fn load_pair(dir: &Path, prefix: &str) -> Result<(Images, Vec<u8>, String), DataError> {
    let image_path = find_in_dir(dir, &idx_names(&format!("{prefix}-images"), "idx3-ubyte"))?;
    let label_path = find_in_dir(dir, &idx_names(&format!("{prefix}-labels"), "idx1-ubyte"))?;
    let (image_name, label_name) = (label(&image_path), label(&label_path));
    let images = parse_images(&image_name, read_file(&image_path)?)?;
    let labels = parse_labels(&label_name, read_file(&label_path)?, CLASSES)?;
    if images.n != labels.len() {
        return Err(DataError::new(format!(
            "{image_name} has {} images but {label_name} has {} labels",
            images.n,
            labels.len()
        )));
    }
    Ok((images, labels, image_name))
}

/// Pixels to `[0, 1]` and labels to class indices.
fn to_split(pixels: &[u8], labels: &[u8]) -> Split {
    Split {
        x: pixels.iter().map(|&p| f32::from(p) / 255.0).collect(),
        y: labels.iter().map(|&l| f32::from(l)).collect(),
        n: labels.len(),
    }
}

/// Load MNIST or Fashion-MNIST from the folder `dir`: the 60,000-image files
/// are the training split, the 10,000-image files the test split; with
/// `validation` the last 5,000 training images become the validation split.
pub(crate) fn load_images(name: &str, dir: &Path, validation: bool) -> Result<Dataset, DataError> {
    load_images_with(name, dir, validation, 0, false)
}

/// The key of the permutation that `labels: "shuffled"` applies (the same for every run,
/// so that runs with different seeds memorise the same random labels).
const SHUFFLE_KEY: u64 = 0x7a68_616e_6721_6c62;

/// [`load_images`] with the random-label arguments: only the first `limit` training images
/// (0: all; validation is then the last tenth of them), and with `shuffled` their labels
/// replaced by a fixed random permutation of themselves (Zhang et al.). Test labels stay
/// true.
pub(crate) fn load_images_with(
    name: &str,
    dir: &Path,
    validation: bool,
    limit: usize,
    shuffled: bool,
) -> Result<Dataset, DataError> {
    require_dir(
        dir,
        "train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz]",
    )?;
    let (train_images, train_labels, train_name) = load_pair(dir, "train")?;
    let (test_images, test_labels, test_name) = load_pair(dir, "t10k")?;
    let shape = (train_images.rows, train_images.cols);
    if shape != (test_images.rows, test_images.cols) {
        return Err(DataError::new(format!(
            "{train_name} has {}x{} images but {test_name} has {}x{}",
            shape.0, shape.1, test_images.rows, test_images.cols
        )));
    }
    let pixels_per_image = shape.0 * shape.1;
    let (mut train_images, mut train_labels) = (train_images, train_labels);
    if limit > 0 {
        if limit > train_images.n || limit > train_labels.len() {
            return Err(DataError::in_file(
                &train_name,
                format!("has {} images, fewer than limit {limit}", train_images.n),
            ));
        }
        train_images.pixels.truncate(limit * pixels_per_image);
        train_images.n = limit;
        train_labels.truncate(limit);
    }
    if shuffled {
        // Fisher–Yates with SplitMix64 draws keyed by position.
        let mix = |mut z: u64| {
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        for i in (1..train_labels.len()).rev() {
            let j = (mix(SHUFFLE_KEY ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15))
                % (i as u64 + 1)) as usize;
            train_labels.swap(i, j);
        }
    }
    let n_train = train_images.n;
    let held_out = if limit > 0 {
        limit / 10
    } else {
        MNIST_VALIDATION
    };
    let (train, val) = if validation {
        if n_train <= held_out || held_out == 0 {
            return Err(DataError::in_file(
                &train_name,
                format!(
                    "has {n_train} training images; a validation split takes the last {held_out}, so more are needed"
                ),
            ));
        }
        let keep = n_train - held_out;
        let pixels = train_images
            .pixels
            .split_at_checked(keep * pixels_per_image);
        let labels = train_labels.split_at_checked(keep);
        let (Some((train_px, val_px)), Some((train_lb, val_lb))) = (pixels, labels) else {
            return Err(DataError::in_file(
                &train_name,
                "image and label counts disagree",
            ));
        };
        (to_split(train_px, train_lb), Some(to_split(val_px, val_lb)))
    } else {
        (to_split(&train_images.pixels, &train_labels), None)
    };
    Ok(Dataset {
        name: name.to_string(),
        source: label(dir),
        task: Task::Classification { classes: CLASSES },
        x_shape: vec![shape.0, shape.1],
        y_shape: vec![],
        train,
        val,
        test: to_split(&test_images.pixels, &test_labels),
        scaling: None,
        vocab: None,
        sparse: Vec::new(),
    })
}

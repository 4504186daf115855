//! Data sets for the runtime: loading, fixed splits, scaling, and
//! safetensors tensor files.
//!
//! * [`load`] / [`load_with_scaling`] read one of [`DATASET_NAMES`] from the
//!   copy embedded in the crate (digits only) or from a path, and return a
//!   [`Dataset`] with seed-free train / validation / test [`Split`]s.
//! * [`tensorfile`] writes and reads F32 safetensors files atomically.
//!
//! Splits never depend on a seed:
//! * digits, breast_cancer, diabetes: row `i` is a test row when `i % 5 == 4`;
//!   with validation, a validation row when `i % 5 == 3`; training otherwise.
//! * mnist, fashion_mnist: the 60,000-image files are training, the 10,000-image
//!   files test; with validation the last 5,000 training images are held out.
//!
//! Scaling: digits ÷ 16 and MNIST/Fashion ÷ 255 (inputs in `[0, 1]`);
//! breast_cancer and diabetes features are standardised with the mean and
//! population std of the final training rows ([`Dataset::scaling`]). Targets are
//! never scaled.
//!
//! Every failure is a [`DataError`] whose message names the file.

#![warn(missing_docs)]

mod dataset;
mod error;
mod idx;
mod source;
mod split;
mod table;
mod tabular;
pub mod tensorfile;

use std::path::Path;

pub use dataset::{Dataset, Scaling, Split, Task};
pub use error::DataError;

/// The names [`load`] accepts (`fashion-mnist` and other `-` spellings are
/// accepted too, and upper case).
pub const DATASET_NAMES: &[&str] = &[
    "digits",
    "mnist",
    "fashion_mnist",
    "breast_cancer",
    "diabetes",
];

/// What to pass for a data set that has no embedded copy.
fn expected_path(name: &str) -> &'static str {
    match name {
        "mnist" | "fashion_mnist" => {
            "a folder with train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], t10k-images-idx3-ubyte[.gz] and t10k-labels-idx1-ubyte[.gz]"
        }
        "breast_cancer" => "the breast_cancer.csv file",
        "diabetes" => "a folder with diabetes_data_raw.csv.gz and diabetes_target.csv.gz",
        _ => "a file or folder",
    }
}

/// Load a data set by name.
///
/// `path` None means the embedded copy, which only exists for `digits` (for
/// the others the error tells the user to pass `--data NAME=PATH`).
/// `validation` carves a validation split out of the training rows.
pub fn load(name: &str, path: Option<&Path>, validation: bool) -> Result<Dataset, DataError> {
    load_with_scaling(name, path, validation, None)
}

/// Like [`load`], but when `scaling` is `Some` (e.g. read back from a
/// checkpoint) the features are standardised with it instead of with
/// statistics of the training rows; the returned [`Dataset::scaling`] is then
/// a copy of it. Only breast_cancer and diabetes have a standardisation; giving
/// one for another data set, or one with the wrong number of features, is an
/// error.
pub fn load_with_scaling(
    name: &str,
    path: Option<&Path>,
    validation: bool,
    scaling: Option<&Scaling>,
) -> Result<Dataset, DataError> {
    let key = name.trim().to_ascii_lowercase().replace('-', "_");
    let Some(&canonical) = DATASET_NAMES.iter().find(|&&known| known == key) else {
        return Err(DataError::new(format!(
            "unknown data set '{name}'; known data sets: {}",
            DATASET_NAMES.join(", ")
        )));
    };
    if canonical == "digits" {
        return tabular::load_digits(path, validation, scaling);
    }
    let Some(path) = path else {
        return Err(DataError::new(format!(
            "data set '{canonical}' has no embedded copy (only digits does); pass --data {canonical}=PATH with {}",
            expected_path(canonical)
        )));
    };
    match canonical {
        "mnist" | "fashion_mnist" => {
            tabular::reject_scaling(&source::label(path), canonical, scaling)?;
            idx::load_images(canonical, path, validation)
        }
        "breast_cancer" => tabular::load_breast_cancer(path, validation, scaling),
        _ => tabular::load_diabetes(path, validation, scaling),
    }
}

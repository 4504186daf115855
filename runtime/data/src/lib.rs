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
//! * songs (character-level text, see [`songs_vocabulary`]): tune `i` (tunes are
//!   separated by blank lines) is a test tune when `i % 5 == 4`; with validation, a
//!   validation tune when `i % 5 == 3`; training otherwise. Each split's text is cut
//!   into windows of `seq` characters (the data-set argument, [`DATA_ARGS`]).
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
mod graph;
mod idx;
mod points;
mod source;
mod split;
mod table;
mod tabular;
pub mod tensorfile;
mod text;

use std::path::Path;

pub use dataset::{Dataset, Scaling, Sparse, Split, Task};
pub use error::DataError;
pub use text::songs_vocabulary;

/// The names [`load`] accepts (`fashion-mnist` and other `-` spellings are
/// accepted too, and upper case).
pub const DATASET_NAMES: &[&str] = &[
    "digits",
    "mnist",
    "fashion_mnist",
    "breast_cancer",
    "diabetes",
    "songs",
    "cora",
    "point_mnist",
];

/// An argument a data set takes: written in a training section (`on songs(seq: 200)`)
/// or given with `--data-arg seq=200`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataArg {
    /// The data set.
    pub dataset: &'static str,
    /// The argument's name.
    pub name: &'static str,
    /// Its value when none is given.
    pub default: &'static str,
    /// What it sets.
    pub about: &'static str,
}

/// Every data-set argument there is (the data sets not listed take none).
pub const DATA_ARGS: &[DataArg] = &[
    DataArg {
        dataset: "songs",
        name: "seq",
        default: "100",
        about: "the window length in characters",
    },
    DataArg {
        dataset: "mnist",
        name: "limit",
        default: "0",
        about: "only the first N training images (0: all); validation is then their last tenth",
    },
    DataArg {
        dataset: "mnist",
        name: "labels",
        default: "true",
        about: "`shuffled`: the training labels replaced by a fixed random permutation of themselves",
    },
    DataArg {
        dataset: "fashion_mnist",
        name: "limit",
        default: "0",
        about: "only the first N training images (0: all); validation is then their last tenth",
    },
    DataArg {
        dataset: "fashion_mnist",
        name: "labels",
        default: "true",
        about: "`shuffled`: the training labels replaced by a fixed random permutation of themselves",
    },
    DataArg {
        dataset: "point_mnist",
        name: "points",
        default: "128",
        about: "the points of each set",
    },
    DataArg {
        dataset: "point_mnist",
        name: "shuffle_points",
        default: "false",
        about: "permute the points of each set once more",
    },
];

/// The arguments data set `name` takes (canonical name), in order.
pub fn data_args(name: &str) -> Vec<DataArg> {
    DATA_ARGS
        .iter()
        .filter(|a| a.dataset == name)
        .copied()
        .collect()
}

/// The arguments of data set `name` in force: `given` (later entries win over earlier
/// ones with the same name; an entry with an empty name is positional and takes the
/// next argument in order) with the defaults filled in, in the data set's order.
/// Errors: an argument the data set does not take (the message names the data set and
/// the arguments it takes) or a value that does not fit.
pub fn resolve_args(
    name: &str,
    given: &[(String, String)],
) -> Result<Vec<(String, String)>, DataError> {
    let known = data_args(name);
    let mut values: Vec<String> = known.iter().map(|a| a.default.to_string()).collect();
    let mut position = 0;
    for (key, value) in given {
        let index = if key.is_empty() {
            position += 1;
            position - 1
        } else {
            known
                .iter()
                .position(|a| a.name == key)
                .unwrap_or(usize::MAX)
        };
        if index >= known.len() {
            let shown = if key.is_empty() {
                format!("a positional argument {value}")
            } else {
                format!("`{key}`")
            };
            return Err(DataError::new(if known.is_empty() {
                format!("data set `{name}` takes no arguments (got {shown})")
            } else {
                let list: Vec<String> = known
                    .iter()
                    .map(|a| format!("{} ({}, default {})", a.name, a.about, a.default))
                    .collect();
                format!(
                    "data set `{name}` has no argument {shown}; its arguments: {}",
                    list.join(", ")
                )
            }));
        }
        values[index] = value.trim().to_string();
    }
    for (arg, value) in known.iter().zip(&values) {
        if (arg.dataset, arg.name) == ("songs", "seq") {
            seq_value(value)?;
        }
    }
    Ok(known
        .iter()
        .map(|a| a.name.to_string())
        .zip(values)
        .collect())
}

/// The `seq` argument of `songs`: a whole number of characters, 1 to 2^20.
fn seq_value(value: &str) -> Result<usize, DataError> {
    match value.parse::<usize>() {
        Ok(n) if (1..=text::MAX_SEQ).contains(&n) => Ok(n),
        _ => Err(DataError::new(format!(
            "data set `songs`: seq must be a whole number from 1 to {}, got {value}",
            text::MAX_SEQ
        ))),
    }
}

/// The `points` argument of `point_mnist` among resolved arguments: 1 to 4096 (default
/// 128).
pub fn point_count(args: &[(String, String)]) -> Result<usize, DataError> {
    let given = args
        .iter()
        .find(|(k, _)| k == "points")
        .map(|(_, v)| v.as_str());
    match given.unwrap_or("128").parse::<usize>() {
        Ok(n) if (1..=4096).contains(&n) => Ok(n),
        _ => Err(DataError::new(format!(
            "data set `point_mnist`: points must be a whole number from 1 to 4096, got {}",
            given.unwrap_or("")
        ))),
    }
}

/// What to pass for a data set that has no embedded copy.
fn expected_path(name: &str) -> &'static str {
    match name {
        "mnist" | "fashion_mnist" => {
            "a folder with train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], t10k-images-idx3-ubyte[.gz] and t10k-labels-idx1-ubyte[.gz]"
        }
        "breast_cancer" => "the breast_cancer.csv file",
        "diabetes" => "a folder with diabetes_data_raw.csv.gz and diabetes_target.csv.gz",
        "songs" => "a UTF-8 text file of tunes separated by blank lines",
        "point_mnist" => "an MNIST folder (the IDX files)",
        "cora" => {
            "the cora folder (features.csv, labels.csv, edges.csv, train_idx.txt, val_idx.txt, test_idx.txt)"
        }
        _ => "a file or folder",
    }
}

/// Load a data set by name, with its default arguments.
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
    load_with_args(name, path, validation, scaling, &[])
}

/// Like [`load_with_scaling`], with data-set arguments (see [`resolve_args`]), such as
/// `("seq", "200")` for `songs`.
pub fn load_with_args(
    name: &str,
    path: Option<&Path>,
    validation: bool,
    scaling: Option<&Scaling>,
    args: &[(String, String)],
) -> Result<Dataset, DataError> {
    let key = name.trim().to_ascii_lowercase().replace('-', "_");
    let Some(&canonical) = DATASET_NAMES.iter().find(|&&known| known == key) else {
        return Err(DataError::new(format!(
            "unknown data set '{name}'; known data sets: {}",
            DATASET_NAMES.join(", ")
        )));
    };
    let args = resolve_args(canonical, args)?;
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
            let arg = |k: &str| args.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
            let limit = match arg("limit").unwrap_or("0").parse::<usize>() {
                Ok(n) => n,
                Err(_) => {
                    return Err(DataError::new(format!(
                        "data set `{canonical}`: limit must be a whole number (0: all images), got {}",
                        arg("limit").unwrap_or("")
                    )));
                }
            };
            let shuffled = match arg("labels").unwrap_or("true") {
                "true" => false,
                "shuffled" => true,
                other => {
                    return Err(DataError::new(format!(
                        "data set `{canonical}`: labels must be \"true\" or \"shuffled\", got {other}"
                    )));
                }
            };
            idx::load_images_with(canonical, path, validation, limit, shuffled)
        }
        "breast_cancer" => tabular::load_breast_cancer(path, validation, scaling),
        "point_mnist" => {
            tabular::reject_scaling(&source::label(path), canonical, scaling)?;
            let arg = |k: &str| args.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
            let points = point_count(&args)?;
            let reshuffle = match arg("shuffle_points").unwrap_or("false") {
                "true" => true,
                "false" => false,
                other => {
                    return Err(DataError::new(format!(
                        "data set `point_mnist`: shuffle_points must be true or false, got {other}"
                    )));
                }
            };
            points::load_point_mnist(path, validation, points, reshuffle)
        }
        "cora" => {
            tabular::reject_scaling(&source::label(path), canonical, scaling)?;
            graph::load_cora(path, validation)
        }
        "songs" => {
            let file = source::label(path);
            if scaling.is_some() {
                return Err(DataError::in_file(
                    &file,
                    "data set 'songs' is character ids and takes no stored standardisation",
                ));
            }
            let seq = args
                .iter()
                .find(|(k, _)| k == "seq")
                .map_or(Ok(text::DEFAULT_SEQ), |(_, v)| seq_value(v))?;
            text::load_songs(path, validation, seq)
        }
        _ => tabular::load_diabetes(path, validation, scaling),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn songs_default_seq_is_the_loaders() {
        let args = resolve_args("songs", &[]).unwrap();
        assert_eq!(args, vec![("seq".to_string(), "100".to_string())]);
        assert_eq!(seq_value(&args[0].1).unwrap(), text::DEFAULT_SEQ);
    }
}

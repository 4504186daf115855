//! Tabular data sets: digits (CSV, embedded or from a file), breast_cancer
//! (CSV with a count/class-name header) and diabetes (two whitespace tables).
//! All use the modulo-5 split of [`crate::split::modulo5`].

use std::path::Path;

use crate::source::{decode, file_or_dir, find_in_dir, label, raw_or_gz, read_file, text};
use crate::split::{RowSplit, check_scaling, gather, modulo5, standardisation, standardise};
use crate::table::{Sep, Table, parse_table};
use crate::{DataError, Dataset, Scaling, Split, Task};

/// scikit-learn's digits, gzipped CSV, compiled into the crate.
static EMBEDDED_DIGITS: &[u8] = include_bytes!("../assets/digits.csv.gz");
/// How the embedded copy is named in error messages.
pub(crate) const EMBEDDED_NAME: &str = "embedded digits";

/// Largest pixel value of the digits images.
const DIGITS_MAX: f64 = 16.0;

/// Error for a stored scaling given to a data set with a fixed scale.
pub(crate) fn reject_scaling(
    file: &str,
    dataset: &str,
    stored: Option<&Scaling>,
) -> Result<(), DataError> {
    match stored {
        Some(_) => Err(DataError::in_file(
            file,
            format!(
                "data set '{dataset}' uses a fixed pixel scale and takes no stored standardisation"
            ),
        )),
        None => Ok(()),
    }
}

/// Check that column `col` of every row is an integer class in `0..classes`.
fn check_labels(file: &str, table: &Table, col: usize, classes: usize) -> Result<(), DataError> {
    for row in 0..table.rows {
        let v = table.get(row, col).unwrap_or(f64::NAN);
        if !(v.fract() == 0.0 && v >= 0.0 && v < classes as f64) {
            let expected = match classes {
                2 => "0 or 1".to_string(),
                _ => format!("an integer 0..{}", classes - 1),
            };
            return Err(DataError::in_file(
                file,
                format!(
                    "line {}, column {}: label {v} is out of range, expected {expected}",
                    table.line(row),
                    col + 1
                ),
            ));
        }
    }
    Ok(())
}

/// Build the train / validation / test splits of a table (features `0..cols`
/// of `x`, target column `y_col` of `y`).
fn splits(
    x: &Table,
    cols: usize,
    y: &Table,
    y_col: usize,
    rows: &RowSplit,
    scale: &dyn Fn(usize, f64) -> f32,
) -> (Split, Option<Split>, Split) {
    (
        gather(x, cols, y, y_col, &rows.train, scale),
        rows.val
            .as_ref()
            .map(|val| gather(x, cols, y, y_col, val, scale)),
        gather(x, cols, y, y_col, &rows.test, scale),
    )
}

/// The stored scaling (after checking it fits), or one computed from the
/// training rows.
fn choose_scaling(
    file: &str,
    stored: Option<&Scaling>,
    x: &Table,
    cols: usize,
    train: &[usize],
) -> Result<Scaling, DataError> {
    match stored {
        Some(scaling) => {
            check_scaling(file, scaling, cols)?;
            Ok(scaling.clone())
        }
        None => Ok(standardisation(x, cols, train)),
    }
}

/// Load digits from the embedded copy (`path` None), a CSV file or a folder
/// holding `digits.csv[.gz]`. Pixels are divided by 16.
pub(crate) fn load_digits(
    path: Option<&Path>,
    validation: bool,
    stored: Option<&Scaling>,
) -> Result<Dataset, DataError> {
    let (file, source, bytes) = match path {
        None => (
            EMBEDDED_NAME.to_string(),
            "embedded".to_string(),
            decode(EMBEDDED_NAME, EMBEDDED_DIGITS.to_vec(), true)?,
        ),
        Some(p) => {
            let found = file_or_dir(p, &raw_or_gz("digits.csv"))?;
            (label(&found), label(p), read_file(&found)?)
        }
    };
    reject_scaling(&file, "digits", stored)?;
    let table = parse_table(&file, &text(&file, bytes)?, Sep::Comma, 0, Some(65))?;
    check_labels(&file, &table, 64, 10)?;
    for row in 0..table.rows {
        for col in 0..64 {
            let v = table.get(row, col).unwrap_or(f64::NAN);
            if !(0.0..=DIGITS_MAX).contains(&v) {
                return Err(DataError::in_file(
                    &file,
                    format!(
                        "line {}, column {}: pixel value {v} is outside 0..16",
                        table.line(row),
                        col + 1
                    ),
                ));
            }
        }
    }
    let rows = modulo5(table.rows, validation);
    let scale = |_: usize, v: f64| (v / DIGITS_MAX) as f32;
    let (train, val, test) = splits(&table, 64, &table, 64, &rows, &scale);
    Ok(Dataset {
        name: "digits".to_string(),
        source,
        task: Task::Classification { classes: 10 },
        x_shape: vec![8, 8],
        y_shape: vec![],
        train,
        val,
        test,
        scaling: None,
        vocab: None,
        sparse: Vec::new(),
    })
}

/// The header line `n_rows,n_features,class0,class1` of breast_cancer.csv.
fn parse_header(file: &str, text: &str) -> Result<(usize, usize), DataError> {
    let line = text.lines().next().unwrap_or("");
    let fields: Vec<&str> = line.split(',').map(str::trim).collect();
    let number = |i: usize| fields.get(i).and_then(|f| f.parse::<usize>().ok());
    match (number(0), number(1), fields.len()) {
        (Some(rows), Some(features), 4) if features > 0 => Ok((rows, features)),
        _ => {
            let shown: String = line.chars().take(60).collect();
            Err(DataError::in_file(
                file,
                format!(
                    "line 1: expected a header 'n_rows,n_features,class0,class1' (like 569,30,malignant,benign), found '{shown}'"
                ),
            ))
        }
    }
}

/// Load breast_cancer from a CSV file (or a folder holding
/// `breast_cancer.csv[.gz]`): binary target, standardised features.
pub(crate) fn load_breast_cancer(
    path: &Path,
    validation: bool,
    stored: Option<&Scaling>,
) -> Result<Dataset, DataError> {
    let found = file_or_dir(path, &raw_or_gz("breast_cancer.csv"))?;
    let file = label(&found);
    let text = text(&file, read_file(&found)?)?;
    let (n_rows, n_features) = parse_header(&file, &text)?;
    let cols = n_features
        .checked_add(1)
        .ok_or_else(|| DataError::in_file(&file, "line 1: feature count too large"))?;
    let table = parse_table(&file, &text, Sep::Comma, 1, Some(cols))?;
    if table.rows != n_rows {
        return Err(DataError::in_file(
            &file,
            format!(
                "the header says {n_rows} rows but the file has {}",
                table.rows
            ),
        ));
    }
    check_labels(&file, &table, n_features, 2)?;
    let rows = modulo5(table.rows, validation);
    let scaling = choose_scaling(&file, stored, &table, n_features, &rows.train)?;
    let scale = |col: usize, v: f64| standardise(&scaling, col, v);
    let (train, val, test) = splits(&table, n_features, &table, n_features, &rows, &scale);
    Ok(Dataset {
        name: "breast_cancer".to_string(),
        source: label(path),
        task: Task::Binary,
        x_shape: vec![n_features],
        y_shape: vec![1],
        train,
        val,
        test,
        scaling: Some(scaling),
        vocab: None,
        sparse: Vec::new(),
    })
}

/// Load diabetes from a folder holding `diabetes_data_raw.csv[.gz]` and
/// `diabetes_target.csv[.gz]` (a path to one of those files also works):
/// standardised features, raw regression target.
pub(crate) fn load_diabetes(
    path: &Path,
    validation: bool,
    stored: Option<&Scaling>,
) -> Result<Dataset, DataError> {
    let dir = match path.parent() {
        Some(parent) if path.is_file() && !parent.as_os_str().is_empty() => parent,
        Some(_) if path.is_file() => Path::new("."),
        _ => path,
    };
    let x_path = find_in_dir(dir, &raw_or_gz("diabetes_data_raw.csv"))?;
    let y_path = find_in_dir(dir, &raw_or_gz("diabetes_target.csv"))?;
    let (x_file, y_file) = (label(&x_path), label(&y_path));
    let x = parse_table(
        &x_file,
        &text(&x_file, read_file(&x_path)?)?,
        Sep::Whitespace,
        0,
        None,
    )?;
    let y = parse_table(
        &y_file,
        &text(&y_file, read_file(&y_path)?)?,
        Sep::Whitespace,
        0,
        Some(1),
    )?;
    if x.rows != y.rows {
        return Err(DataError::new(format!(
            "{x_file} has {} rows but {y_file} has {} targets",
            x.rows, y.rows
        )));
    }
    let rows = modulo5(x.rows, validation);
    let scaling = choose_scaling(&x_file, stored, &x, x.cols, &rows.train)?;
    let scale = |col: usize, v: f64| standardise(&scaling, col, v);
    let (train, val, test) = splits(&x, x.cols, &y, 0, &rows, &scale);
    Ok(Dataset {
        name: "diabetes".to_string(),
        source: label(path),
        task: Task::Regression,
        x_shape: vec![x.cols],
        y_shape: vec![1],
        train,
        val,
        test,
        scaling: Some(scaling),
        vocab: None,
        sparse: Vec::new(),
    })
}

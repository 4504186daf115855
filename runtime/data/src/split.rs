//! The fixed, seed-free splits and the standardisation of tabular features.

use crate::table::Table;
use crate::{DataError, Scaling, Split};

/// Row indices of each split.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RowSplit {
    /// Training rows.
    pub train: Vec<usize>,
    /// Validation rows, when asked for.
    pub val: Option<Vec<usize>>,
    /// Test rows.
    pub test: Vec<usize>,
}

/// The modulo-5 rule for small data sets: row `i` is a test row when
/// `i % 5 == 4`; with `validation`, a validation row when `i % 5 == 3`;
/// a training row otherwise.
pub(crate) fn modulo5(n: usize, validation: bool) -> RowSplit {
    let mut split = RowSplit {
        train: Vec::new(),
        val: validation.then(Vec::new),
        test: Vec::new(),
    };
    for i in 0..n {
        match (i % 5, split.val.as_mut()) {
            (4, _) => split.test.push(i),
            (3, Some(val)) => val.push(i),
            _ => split.train.push(i),
        }
    }
    split
}

/// Per-column mean and population standard deviation of `rows` of `x`
/// (columns `0..cols`). A constant column gets its value as mean and std 1.
pub(crate) fn standardisation(x: &Table, cols: usize, rows: &[usize]) -> Scaling {
    let mut mean = Vec::with_capacity(cols);
    let mut std = Vec::with_capacity(cols);
    for col in 0..cols {
        let column: Vec<f64> = rows.iter().filter_map(|&r| x.get(r, col)).collect();
        let (m, s) = column_stats(&column);
        mean.push(m as f32);
        std.push(s as f32);
    }
    Scaling { mean, std }
}

/// Mean and population std of `values` (`(0, 1)` when empty; std 1 when the
/// values are all equal or the std is not a usable positive number).
fn column_stats(values: &[f64]) -> (f64, f64) {
    let Some(&first) = values.first() else {
        return (0.0, 1.0);
    };
    if values.iter().all(|&v| v == first) {
        return (first, 1.0);
    }
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = values.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
    let std = var.sqrt();
    if std.is_finite() && std > 0.0 && (std as f32) > 0.0 {
        (mean, std)
    } else {
        (mean, 1.0)
    }
}

/// Check a stored scaling against a data set with `cols` features.
pub(crate) fn check_scaling(file: &str, scaling: &Scaling, cols: usize) -> Result<(), DataError> {
    if scaling.mean.len() != cols || scaling.std.len() != cols {
        return Err(DataError::in_file(
            file,
            format!(
                "the stored scaling has {} means and {} stds, but the data has {cols} features",
                scaling.mean.len(),
                scaling.std.len()
            ),
        ));
    }
    let bad_mean = scaling.mean.iter().position(|m| !m.is_finite());
    let bad_std = scaling.std.iter().position(|s| !s.is_finite() || *s == 0.0);
    if let Some(i) = bad_mean.or(bad_std) {
        return Err(DataError::in_file(
            file,
            format!(
                "the stored scaling of feature {i} is unusable (non-finite mean or std, or std 0)"
            ),
        ));
    }
    Ok(())
}

/// Build a split from `rows` of `x` (first `cols` columns, each mapped by
/// `scale(col, value)`) and of the target `y` (column `y_col` of `y`).
pub(crate) fn gather(
    x: &Table,
    cols: usize,
    y: &Table,
    y_col: usize,
    rows: &[usize],
    scale: &dyn Fn(usize, f64) -> f32,
) -> Split {
    let mut xs = Vec::with_capacity(rows.len().saturating_mul(cols));
    let mut ys = Vec::with_capacity(rows.len());
    for &row in rows {
        for col in 0..cols {
            xs.push(scale(col, x.get(row, col).unwrap_or(0.0)));
        }
        ys.push(y.get(row, y_col).unwrap_or(0.0) as f32);
    }
    Split {
        x: xs,
        y: ys,
        n: rows.len(),
    }
}

/// `(value - mean) / std` for column `col` of `scaling` (identity if absent).
pub(crate) fn standardise(scaling: &Scaling, col: usize, value: f64) -> f32 {
    let mean = scaling.mean.get(col).copied().unwrap_or(0.0) as f64;
    let std = scaling.std.get(col).copied().unwrap_or(1.0) as f64;
    ((value - mean) / std) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modulo_rule_counts() {
        let s = modulo5(1797, false);
        assert_eq!((s.train.len(), s.test.len()), (1438, 359));
        assert!(s.val.is_none());
        let s = modulo5(1797, true);
        let val = s.val.unwrap();
        assert_eq!((s.train.len(), val.len(), s.test.len()), (1079, 359, 359));
        assert_eq!(&s.train[..4], &[0, 1, 2, 5]);
        assert_eq!(&val[..2], &[3, 8]);
        assert_eq!(&s.test[..2], &[4, 9]);
        assert_eq!(modulo5(0, true).train.len(), 0);
    }

    #[test]
    fn stats() {
        assert_eq!(column_stats(&[2.0, 4.0]), (3.0, 1.0));
        assert_eq!(column_stats(&[0.1, 0.1, 0.1]), (0.1, 1.0));
        let (m, s) = column_stats(&[1.0, 2.0, 3.0, 4.0]);
        assert!((m - 2.5).abs() < 1e-12 && (s - 1.25f64.sqrt()).abs() < 1e-12);
    }
}

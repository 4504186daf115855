//! The reference data sets in ../shared/data beside the repository (skipped, with a printed
//! reason, when a folder is missing): MNIST, Fashion-MNIST, breast_cancer,
//! diabetes.

mod common;

use dlc_data::{DataError, Dataset, Scaling, Split, Task, load, load_with_scaling};

fn histogram(splits: &[&Split]) -> Vec<usize> {
    let mut counts = vec![0; 10];
    for split in splits {
        for &y in &split.y {
            counts[y as usize] += 1;
        }
    }
    counts
}

fn pixel_mean(splits: &[&Split]) -> f64 {
    let (sum, count) = splits.iter().fold((0.0f64, 0usize), |(s, c), split| {
        (
            s + split.x.iter().map(|&v| v as f64).sum::<f64>(),
            c + split.x.len(),
        )
    });
    sum / count as f64
}

#[test]
fn mnist_with_validation() -> Result<(), DataError> {
    let Some(dir) = common::shared("mnist") else {
        return Ok(());
    };
    let d = load("mnist", Some(&dir), true)?;
    let val = d.val.as_ref().expect("validation split requested");
    assert_eq!((d.train.n, val.n, d.test.n), (55000, 5000, 10000));
    assert_eq!(d.x_shape, vec![28, 28]);
    assert!(d.y_shape.is_empty());
    assert_eq!(d.task, Task::Classification { classes: 10 });
    assert_eq!(d.train.x.len(), 55000 * 784);
    assert_eq!(val.x.len(), 5000 * 784);
    assert_eq!(d.train.example_len(), 784);
    assert_eq!(
        &d.train.y[..10],
        &[5.0, 0.0, 4.0, 1.0, 9.0, 2.0, 1.0, 3.0, 1.0, 4.0]
    );
    assert_eq!(
        &d.test.y[..10],
        &[7.0, 2.0, 1.0, 0.0, 4.0, 1.0, 4.0, 9.0, 5.0, 9.0]
    );
    assert_eq!(
        histogram(&[&d.train, val]),
        [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    );
    assert_eq!(
        histogram(&[&d.test]),
        [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    );
    let mean = pixel_mean(&[&d.train, val]);
    assert!((mean - 0.1307).abs() < 5e-4, "train pixel mean {mean}");
    let test_mean = pixel_mean(&[&d.test]);
    assert!(
        (test_mean - 0.1325).abs() < 5e-4,
        "test pixel mean {test_mean}"
    );
    assert!(d.train.x.iter().all(|&v| (0.0..=1.0).contains(&v)));
    assert_eq!(d.dim("height"), Some(28));
    assert_eq!(d.dim("inputs"), Some(784));
    Ok(())
}

#[test]
fn fashion_mnist_without_validation() -> Result<(), DataError> {
    let Some(dir) = common::shared("fashion-mnist") else {
        return Ok(());
    };
    let d = load("fashion-mnist", Some(&dir), false)?;
    assert_eq!(d.name, "fashion_mnist");
    assert_eq!((d.train.n, d.test.n), (60000, 10000));
    assert!(d.val.is_none());
    assert_eq!(histogram(&[&d.train]), vec![6000; 10]);
    assert_eq!(histogram(&[&d.test]), vec![1000; 10]);
    let mean = pixel_mean(&[&d.train]);
    assert!((mean - 0.2860).abs() < 5e-4, "train pixel mean {mean}");
    Ok(())
}

/// Per-feature mean and population std of a split.
fn column_stats(split: &Split, cols: usize) -> Vec<(f64, f64)> {
    (0..cols)
        .map(|c| {
            let column: Vec<f64> = (0..split.n).map(|r| split.x[r * cols + c] as f64).collect();
            let mean = column.iter().sum::<f64>() / column.len() as f64;
            let var = column.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / column.len() as f64;
            (mean, var.sqrt())
        })
        .collect()
}

/// Checks shared by the standardised data sets.
fn check_standardised(d: &Dataset, raw: &[Vec<f64>]) {
    let cols = d.x_shape[0];
    let scaling = d.scaling.as_ref().expect("standardised data set");
    assert_eq!((scaling.mean.len(), scaling.std.len()), (cols, cols));
    for (c, (mean, std)) in column_stats(&d.train, cols).into_iter().enumerate() {
        assert!(mean.abs() < 1e-4, "feature {c}: train mean {mean}");
        assert!((std - 1.0).abs() < 1e-4, "feature {c}: train std {std}");
    }
    // The scaling equals the statistics of the final training rows of the raw file.
    let train_rows: Vec<&Vec<f64>> = raw
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 5 != 4 && (d.val.is_none() || i % 5 != 3))
        .map(|(_, row)| row)
        .collect();
    assert_eq!(train_rows.len(), d.train.n);
    for c in 0..cols {
        let mean = train_rows.iter().map(|r| r[c]).sum::<f64>() / train_rows.len() as f64;
        let var = train_rows
            .iter()
            .map(|r| (r[c] - mean).powi(2))
            .sum::<f64>()
            / train_rows.len() as f64;
        assert!((scaling.mean[c] as f64 - mean).abs() <= 1e-6 * mean.abs().max(1.0));
        assert!((scaling.std[c] as f64 - var.sqrt()).abs() <= 1e-6 * var.sqrt().max(1.0));
    }
    // The test split uses the training statistics: row 4 is the first test row.
    for (c, &value) in raw[4].iter().enumerate().take(cols) {
        let expected = (value - scaling.mean[c] as f64) / scaling.std[c] as f64;
        assert!(
            (d.test.x[c] as f64 - expected).abs() < 1e-5,
            "test feature {c}"
        );
    }
    let test_means: Vec<f64> = column_stats(&d.test, cols)
        .into_iter()
        .map(|(m, _)| m)
        .collect();
    assert!(
        test_means.iter().any(|m| m.abs() > 1e-3),
        "test split looks separately standardised"
    );
}

/// Parse numeric rows of text (comma or whitespace separated) for the checks.
fn raw_rows(text: &str, skip: usize) -> Vec<Vec<f64>> {
    text.lines()
        .skip(skip)
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            l.split(|c: char| c == ',' || c.is_whitespace())
                .filter(|s| !s.is_empty())
                .map(|s| s.parse().unwrap())
                .collect()
        })
        .collect()
}

fn gunzip_text(path: &std::path::Path) -> String {
    use std::io::Read;
    let mut s = String::new();
    flate2::read::GzDecoder::new(std::fs::File::open(path).unwrap())
        .read_to_string(&mut s)
        .unwrap();
    s
}

#[test]
fn breast_cancer() -> Result<(), DataError> {
    let Some(dir) = common::shared("sklearn-small") else {
        return Ok(());
    };
    let file = dir.join("breast_cancer.csv");
    let raw = raw_rows(&std::fs::read_to_string(&file).unwrap(), 1);
    let d = load("breast_cancer", Some(&file), false)?;
    assert_eq!((d.train.n, d.test.n), (456, 113));
    assert_eq!(d.task, Task::Binary);
    assert_eq!((d.x_shape.clone(), d.y_shape.clone()), (vec![30], vec![1]));
    assert_eq!(d.dim("outputs"), Some(1));
    assert_eq!(d.dim("classes"), None);
    assert_eq!(d.train.y.len(), 456);
    assert!(
        d.train
            .y
            .iter()
            .chain(&d.test.y)
            .all(|&y| y == 0.0 || y == 1.0)
    );
    let benign = d
        .train
        .y
        .iter()
        .chain(&d.test.y)
        .filter(|&&y| y == 1.0)
        .count();
    assert_eq!(benign, 357);
    check_standardised(&d, &raw);

    let v = load("breast_cancer", Some(&dir), true)?; // a folder works too
    assert_eq!(
        (v.train.n, v.val.as_ref().map(|s| s.n), v.test.n),
        (342, Some(114), 113)
    );
    check_standardised(&v, &raw);
    assert_ne!(
        v.scaling, d.scaling,
        "scaling must come from the final training rows"
    );

    // A stored scaling is applied instead of the computed one.
    let again = load_with_scaling("breast_cancer", Some(&file), true, v.scaling.as_ref())?;
    assert_eq!(
        again,
        Dataset {
            source: again.source.clone(),
            ..v.clone()
        }
    );
    let identity = Scaling {
        mean: vec![0.0; 30],
        std: vec![1.0; 30],
    };
    let unscaled = load_with_scaling("breast_cancer", Some(&file), false, Some(&identity))?;
    assert_eq!(unscaled.train.x[0], raw[0][0] as f32);
    assert_eq!(unscaled.test.x[29], raw[4][29] as f32);
    assert_eq!(unscaled.scaling.as_ref(), Some(&identity));
    Ok(())
}

#[test]
fn diabetes() -> Result<(), DataError> {
    let Some(dir) = common::shared("sklearn-small") else {
        return Ok(());
    };
    let raw = raw_rows(&gunzip_text(&dir.join("diabetes_data_raw.csv.gz")), 0);
    let d = load("diabetes", Some(&dir), false)?;
    assert_eq!((d.train.n, d.test.n), (354, 88));
    assert_eq!(d.task, Task::Regression);
    assert_eq!((d.x_shape.clone(), d.y_shape.clone()), (vec![10], vec![1]));
    // Targets stay raw: rows 0,1,2,3 train, row 4 test.
    assert_eq!(&d.train.y[..4], &[151.0, 75.0, 141.0, 206.0]);
    assert_eq!(d.test.y[0], 135.0);
    let all_y: Vec<f32> = d.train.y.iter().chain(&d.test.y).copied().collect();
    assert_eq!(all_y.iter().copied().fold(f32::INFINITY, f32::min), 25.0);
    assert_eq!(
        all_y.iter().copied().fold(f32::NEG_INFINITY, f32::max),
        346.0
    );
    check_standardised(&d, &raw);

    let v = load("diabetes", Some(&dir), true)?;
    assert_eq!(
        (v.train.n, v.val.as_ref().map(|s| s.n), v.test.n),
        (266, Some(88), 88)
    );
    check_standardised(&v, &raw);
    Ok(())
}

//! The embedded digits data set: sizes, splits, scaling, labels, dims.

mod common;

use dlc_data::{DATASET_NAMES, DataError, Dataset, Task, load};

fn class_counts(splits: &[&dlc_data::Split]) -> [usize; 10] {
    let mut counts = [0; 10];
    for split in splits {
        for &y in &split.y {
            counts[y as usize] += 1;
        }
    }
    counts
}

#[test]
fn embedded_digits_without_validation() -> Result<(), DataError> {
    let d: Dataset = load("digits", None, false)?;
    assert_eq!(d.name, "digits");
    assert_eq!(d.source, "embedded");
    assert_eq!(d.task, Task::Classification { classes: 10 });
    assert_eq!(d.x_shape, vec![8, 8]);
    assert!(d.y_shape.is_empty());
    assert_eq!((d.train.n, d.test.n), (1438, 359));
    assert_eq!(d.train.n + d.test.n, 1797);
    assert!(d.val.is_none());
    assert!(d.scaling.is_none());
    assert_eq!(d.train.x.len(), 1438 * 64);
    assert_eq!(d.train.y.len(), 1438);
    assert_eq!(d.test.x.len(), 359 * 64);
    assert_eq!(d.train.example_len(), 64);
    // Rows 0,1,2,3 are training rows, row 4 is the first test row; the file's
    // labels run 0,1,2,3,4,... at the start.
    assert_eq!(&d.train.y[..4], &[0.0, 1.0, 2.0, 3.0]);
    assert_eq!(d.test.y[0], 4.0);
    // First image, first row: 0,0,5,13,9,1,0,0 (÷16).
    let first_row: Vec<f32> = d.train.x[..8].to_vec();
    let expected: Vec<f32> = [0.0, 0.0, 5.0, 13.0, 9.0, 1.0, 0.0, 0.0]
        .iter()
        .map(|v| v / 16.0)
        .collect();
    assert_eq!(first_row, expected);
    for split in [&d.train, &d.test] {
        assert!(split.x.iter().all(|&v| (0.0..=1.0).contains(&v)));
    }
    assert!(d.train.x.contains(&1.0));
    assert_eq!(
        class_counts(&[&d.train, &d.test]),
        [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
    );
    Ok(())
}

#[test]
fn embedded_digits_with_validation() -> Result<(), DataError> {
    let d = load("digits", None, true)?;
    let val = d.val.as_ref().expect("validation split requested");
    assert_eq!((d.train.n, val.n, d.test.n), (1079, 359, 359));
    assert_eq!(val.x.len(), 359 * 64);
    // Row 3 (label 3) is the first validation row.
    assert_eq!(val.y[0], 3.0);
    assert_eq!(&d.train.y[..3], &[0.0, 1.0, 2.0]);
    assert_eq!(
        class_counts(&[&d.train, val, &d.test]),
        [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
    );
    // The test split does not depend on the validation flag.
    let plain = load("digits", None, false)?;
    assert_eq!(plain.test, d.test);
    Ok(())
}

#[test]
fn digits_from_a_path_matches_embedded() -> Result<(), DataError> {
    let Some(dir) = common::shared("sklearn-digits") else {
        return Ok(());
    };
    let from_dir = load("digits", Some(&dir), false)?;
    let from_file = load("digits", Some(&dir.join("digits.csv.gz")), false)?;
    let embedded = load("digits", None, false)?;
    assert_eq!(from_dir.source, dir.display().to_string());
    assert_eq!(from_dir.train, embedded.train);
    assert_eq!(from_file.test, embedded.test);
    Ok(())
}

#[test]
fn dims_and_names() -> Result<(), DataError> {
    let d = load("DIGITS", None, false)?;
    let dims = d.dims();
    for (key, value) in [
        ("inputs", 64),
        ("features", 64),
        ("height", 8),
        ("width", 8),
        ("classes", 10),
        ("outputs", 10),
    ] {
        assert!(
            dims.contains(&(key.to_string(), value)),
            "{key} missing from {dims:?}"
        );
    }
    assert_eq!(d.dim("classes"), Some(10));
    assert_eq!(d.dim("nope"), None);
    assert_eq!(
        DATASET_NAMES,
        &[
            "digits",
            "mnist",
            "fashion_mnist",
            "breast_cancer",
            "diabetes",
            "songs",
            "cora",
            "point_mnist"
        ]
    );
    let empty = dlc_data::Split {
        x: vec![],
        y: vec![],
        n: 0,
    };
    assert_eq!(empty.example_len(), 0);
    Ok(())
}

/// `limit` keeps the first N training images; `labels: shuffled` permutes their labels
/// (the same multiset, most of them moved) and leaves the test labels alone.
#[test]
fn random_labels_permute_the_training_labels() {
    let Some(dir) = std::env::var_os("DLC_SHARED_DATA")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            Some(std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data"))
        })
        .map(|d| d.join("mnist"))
        .filter(|d| d.is_dir())
    else {
        eprintln!("skipped: no shared data folder");
        return;
    };
    let load = |labels: &str, validation| {
        let args = vec![
            ("limit".to_string(), "1000".to_string()),
            ("labels".to_string(), labels.to_string()),
        ];
        dlc_data::load_with_args("mnist", Some(&dir), validation, None, &args).expect("loads")
    };
    let (t, s) = (load("true", false), load("shuffled", false));
    assert_eq!((t.train.n, s.train.n), (1000, 1000));
    assert_eq!(t.train.x, s.train.x);
    assert_eq!(t.test.y, s.test.y);
    let sorted = |v: &[f32]| {
        let mut v = v.to_vec();
        v.sort_by(f32::total_cmp);
        v
    };
    assert_eq!(sorted(&t.train.y), sorted(&s.train.y));
    let moved = t
        .train
        .y
        .iter()
        .zip(&s.train.y)
        .filter(|(a, b)| a != b)
        .count();
    assert!(moved > 800, "only {moved} labels changed");
    let v = load("true", true);
    assert_eq!((v.train.n, v.val.as_ref().map(|s| s.n)), (900, Some(100)));
    assert!(
        dlc_data::load_with_args(
            "mnist",
            Some(&dir),
            false,
            None,
            &[("labels".into(), "maybe".into())]
        )
        .is_err()
    );
}

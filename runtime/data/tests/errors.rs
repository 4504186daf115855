//! Every error class, on small files made in a temporary folder: each message
//! must name the file (and the line / column / offset where that applies).

mod common;

use common::{TempDir, assert_err, gzip, idx_images, idx_labels, s, write_tiny_mnist};
use dlc_data::{Scaling, Task, load, load_with_scaling};

#[test]
fn tiny_mnist_folder_loads_with_every_spelling() {
    let dir = TempDir::new("tiny");
    write_tiny_mnist(&dir);
    let d = load("mnist", Some(&dir.0), false).unwrap();
    assert_eq!(d.task, Task::Classification { classes: 10 });
    assert_eq!((d.train.n, d.test.n), (6, 2));
    assert_eq!(d.x_shape, vec![2, 3]);
    assert_eq!(d.train.y, vec![3.0, 1.0, 4.0, 1.0, 5.0, 9.0]);
    assert_eq!(d.train.x[1], 7.0 / 255.0);
    assert!(d.test.x.iter().all(|&v| v == 1.0));
    assert_eq!(d.dim("width"), Some(3));
    // Fewer than 5,001 training images: no validation split possible.
    assert_err(
        load("mnist", Some(&dir.0), true),
        &[&s(&dir.join("train-images-idx3-ubyte")), "5000"],
    );
}

#[test]
fn idx_truncated_wrong_magic_mismatch_and_range() {
    let dir = TempDir::new("idx");
    write_tiny_mnist(&dir);
    let images = dir.join("train-images-idx3-ubyte");

    // Truncated: the header says 6 images of 2x3 but only 35 pixel bytes follow.
    dir.write(
        "train-images-idx3-ubyte",
        &idx_images(2051, 6, 2, 3, &[0; 35]),
    );
    assert_err(
        load("mnist", Some(&dir.0), false),
        &[&s(&images), "truncated", "52", "51"],
    );
    // Shorter than the header itself.
    dir.write("train-images-idx3-ubyte", &[0, 0, 8, 3, 0]);
    assert_err(
        load("mnist", Some(&dir.0), false),
        &[&s(&images), "truncated"],
    );
    // Huge header counts in a tiny file: an error, not a huge allocation.
    dir.write(
        "train-images-idx3-ubyte",
        &idx_images(2051, u32::MAX, 28, 28, &[0; 10]),
    );
    assert_err(
        load("mnist", Some(&dir.0), false),
        &[&s(&images), "truncated"],
    );
    // Trailing bytes.
    dir.write(
        "train-images-idx3-ubyte",
        &idx_images(2051, 6, 2, 3, &[0; 37]),
    );
    assert_err(
        load("mnist", Some(&dir.0), false),
        &[&s(&images), "unexpected bytes"],
    );
    // Wrong magic: a label file where images belong.
    dir.write("train-images-idx3-ubyte", &idx_labels(2049, 6, &[1; 6]));
    assert_err(
        load("mnist", Some(&dir.0), false),
        &[&s(&images), "magic", "2049", "2051", "label file"],
    );
    // Images with zero rows.
    dir.write("train-images-idx3-ubyte", &idx_images(2051, 6, 0, 3, &[]));
    assert_err(load("mnist", Some(&dir.0), false), &[&s(&images), "0x3"]);
    // Empty: zero images.
    dir.write("train-images-idx3-ubyte", &idx_images(2051, 0, 2, 3, &[]));
    assert_err(
        load("mnist", Some(&dir.0), false),
        &[&s(&images), "empty data"],
    );

    // Count mismatch: 5 images, 6 labels.
    dir.write(
        "train-images-idx3-ubyte",
        &idx_images(2051, 5, 2, 3, &[0; 30]),
    );
    let labels = dir.join("train-labels-idx1-ubyte.gz");
    assert_err(
        load("mnist", Some(&dir.0), false),
        &[&s(&images), &s(&labels), "5 images", "6 labels"],
    );

    // Label out of range, with its byte offset.
    dir.write(
        "train-images-idx3-ubyte",
        &idx_images(2051, 6, 2, 3, &[0; 36]),
    );
    dir.write(
        "train-labels-idx1-ubyte.gz",
        &gzip(&idx_labels(2049, 6, &[0, 1, 2, 10, 4, 5])),
    );
    assert_err(
        load("mnist", Some(&dir.0), false),
        &[&s(&labels), "label 10", "example 3", "byte offset 11"],
    );
    // Wrong magic in a label file.
    dir.write(
        "train-labels-idx1-ubyte.gz",
        &gzip(&idx_images(2051, 6, 1, 1, &[0; 6])),
    );
    assert_err(
        load("mnist", Some(&dir.0), false),
        &[&s(&labels), "magic", "2051"],
    );
}

#[test]
fn idx_train_and_test_shapes_must_agree() {
    let dir = TempDir::new("shape");
    write_tiny_mnist(&dir);
    dir.write(
        "t10k-images.idx3-ubyte.gz",
        &gzip(&idx_images(2051, 2, 3, 2, &[0; 12])),
    );
    assert_err(
        load("fashion_mnist", Some(&dir.0), false),
        &[
            &s(&dir.join("train-images-idx3-ubyte")),
            &s(&dir.join("t10k-images.idx3-ubyte.gz")),
            "2x3",
            "3x2",
        ],
    );
}

#[test]
fn bad_gzip() {
    let dir = TempDir::new("gzip");
    write_tiny_mnist(&dir);
    let labels = dir.join("train-labels-idx1-ubyte.gz");
    // Named .gz but not gzip at all.
    dir.write("train-labels-idx1-ubyte.gz", &idx_labels(2049, 6, &[0; 6]));
    assert_err(
        load("mnist", Some(&dir.0), false),
        &[&s(&labels), "bad gzip"],
    );
    // Gzip magic followed by garbage.
    dir.write(
        "train-labels-idx1-ubyte.gz",
        &[0x1f, 0x8b, 8, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
    );
    assert_err(
        load("mnist", Some(&dir.0), false),
        &[&s(&labels), "bad gzip"],
    );
    // A gzip stream cut short.
    let full = gzip(&idx_labels(2049, 6, &[0; 6]));
    dir.write("train-labels-idx1-ubyte.gz", &full[..full.len() - 6]);
    assert_err(load("mnist", Some(&dir.0), false), &[&s(&labels), "gzip"]);
    // Corrupted CRC.
    let mut bad_crc = full.clone();
    let at = bad_crc.len() - 8;
    bad_crc[at] ^= 0xff;
    dir.write("train-labels-idx1-ubyte.gz", &bad_crc);
    assert_err(load("mnist", Some(&dir.0), false), &[&s(&labels), "gzip"]);
}

#[test]
fn missing_files_and_folders() {
    let dir = TempDir::new("missing");
    let nowhere = dir.join("nowhere");
    assert_err(
        load("mnist", Some(&nowhere), false),
        &[&s(&nowhere), "not found"],
    );
    assert_err(
        load("digits", Some(&nowhere), false),
        &[&s(&nowhere), "not found"],
    );
    assert_err(
        load("breast_cancer", Some(&nowhere), false),
        &[&s(&nowhere), "not found"],
    );
    assert_err(
        load("diabetes", Some(&nowhere), false),
        &[&s(&nowhere), "not found"],
    );
    // A folder lacking one of the four files.
    write_tiny_mnist(&dir);
    std::fs::remove_file(dir.join("t10k-labels.idx1-ubyte")).unwrap();
    assert_err(
        load("mnist", Some(&dir.0), false),
        &[&s(&dir.0), "t10k-labels-idx1-ubyte.gz"],
    );
    // A file where a folder is expected.
    let file = dir.write("plain.txt", b"x");
    assert_err(
        load("mnist", Some(&file), false),
        &[&s(&file), "not a folder"],
    );
    // Diabetes folder without the target file.
    dir.write("diabetes_data_raw.csv", b"1 2\n3 4\n");
    assert_err(
        load("diabetes", Some(&dir.0), false),
        &[&s(&dir.0), "diabetes_target.csv"],
    );
}

#[test]
fn names_and_embedded_copies() {
    assert_err(
        load("cifar", None, false),
        &[
            "unknown data set 'cifar'",
            "digits, mnist, fashion_mnist, breast_cancer, diabetes",
        ],
    );
    assert_err(
        load("mnist", None, false),
        &["mnist", "no embedded copy", "--data mnist=PATH"],
    );
    assert_err(load("diabetes", None, false), &["--data diabetes=PATH"]);
    let scaling = Scaling {
        mean: vec![0.0],
        std: vec![1.0],
    };
    assert_err(
        load_with_scaling("digits", None, false, Some(&scaling)),
        &["embedded digits", "fixed"],
    );
}

#[test]
fn csv_cells_columns_labels_and_counts() {
    let dir = TempDir::new("csv");
    let header = "4,2,malignant,benign\n";
    let bc = dir.join("bc.csv");
    dir.write(
        "bc.csv",
        format!("{header}1,2,0\n3,abc,1\n5,6,0\n7,8,1\n").as_bytes(),
    );
    assert_err(
        load("breast_cancer", Some(&bc), false),
        &[&s(&bc), "line 3, column 2", "'abc'"],
    );
    dir.write(
        "bc.csv",
        format!("{header}1,2,0\n3,4,1\n5,6\n7,8,1\n").as_bytes(),
    );
    assert_err(
        load("breast_cancer", Some(&bc), false),
        &[&s(&bc), "line 4 has 2 columns, expected 3"],
    );
    dir.write(
        "bc.csv",
        format!("{header}1,2,0\n3,4,2\n5,6,0\n7,8,1\n").as_bytes(),
    );
    assert_err(
        load("breast_cancer", Some(&bc), false),
        &[&s(&bc), "line 3, column 3", "label 2", "0 or 1"],
    );
    dir.write(
        "bc.csv",
        format!("{header}1,2,0\n3,4,1\n5,6,0\n").as_bytes(),
    );
    assert_err(
        load("breast_cancer", Some(&bc), false),
        &[&s(&bc), "header says 4 rows", "has 3"],
    );
    dir.write("bc.csv", format!("{header}\n").as_bytes());
    assert_err(
        load("breast_cancer", Some(&bc), false),
        &[&s(&bc), "empty data"],
    );
    dir.write("bc.csv", b"1,2,0\n3,4,1\n");
    assert_err(
        load("breast_cancer", Some(&bc), false),
        &[&s(&bc), "line 1", "header"],
    );
    dir.write("bc.csv", &[0xff, 0xfe, b'1']);
    assert_err(
        load("breast_cancer", Some(&bc), false),
        &[&s(&bc), "UTF-8", "offset 0"],
    );

    // A valid small file; then a stored scaling of the wrong width.
    dir.write(
        "bc.csv",
        format!("{header}1,2,0\n3,4,1\n5,6,0\n7,8,1\n9,10,0\n").as_bytes(),
    );
    let header5 = "5,2,malignant,benign\n";
    dir.write(
        "bc.csv",
        format!("{header5}1,2,0\n3,4,1\n5,6,0\n7,8,1\n9,10,0\n").as_bytes(),
    );
    let d = load("breast_cancer", Some(&bc), false).unwrap();
    assert_eq!((d.train.n, d.test.n), (4, 1));
    let wrong = Scaling {
        mean: vec![0.0; 3],
        std: vec![1.0; 3],
    };
    assert_err(
        load_with_scaling("breast_cancer", Some(&bc), false, Some(&wrong)),
        &[&s(&bc), "3 means", "2 features"],
    );
    let zero = Scaling {
        mean: vec![0.0; 2],
        std: vec![1.0, 0.0],
    };
    assert_err(
        load_with_scaling("breast_cancer", Some(&bc), false, Some(&zero)),
        &[&s(&bc), "feature 1"],
    );

    // Digits: wrong width, label out of range, pixel out of range, empty.
    let digits = dir.join("digits.csv");
    let row = |label: u32, pixel: u32| {
        let mut cells = vec![pixel.to_string(); 64];
        cells.push(label.to_string());
        cells.join(",") + "\n"
    };
    dir.write(
        "digits.csv",
        format!("{}{}", row(1, 3), &row(2, 3)[2..]).as_bytes(),
    );
    assert_err(
        load("digits", Some(&digits), false),
        &[&s(&digits), "line 2 has 64 columns, expected 65"],
    );
    dir.write(
        "digits.csv",
        format!("{}{}", row(1, 3), row(10, 3)).as_bytes(),
    );
    assert_err(
        load("digits", Some(&digits), false),
        &[&s(&digits), "line 2, column 65", "label 10"],
    );
    dir.write(
        "digits.csv",
        format!("{}{}", row(1, 3), row(1, 17)).as_bytes(),
    );
    assert_err(
        load("digits", Some(&digits), false),
        &[&s(&digits), "line 2, column 1", "pixel value 17"],
    );
    dir.write("digits.csv", b"\n\n");
    assert_err(
        load("digits", Some(&dir.0), false),
        &[&s(&digits), "empty data"],
    );
}

#[test]
fn diabetes_counts_and_cells() {
    let dir = TempDir::new("diabetes");
    let x = dir.write("diabetes_data_raw.csv.gz", &gzip(b"1 2\n3 4\n5 6\n"));
    let y = dir.write("diabetes_target.csv.gz", &gzip(b"10\n20\n"));
    assert_err(
        load("diabetes", Some(&dir.0), false),
        &[&s(&x), &s(&y), "3 rows", "2 targets"],
    );
    dir.write("diabetes_target.csv.gz", &gzip(b"10\n20\n3O\n"));
    assert_err(
        load("diabetes", Some(&dir.0), false),
        &[&s(&y), "line 3, column 1", "'3O'"],
    );
    dir.write("diabetes_target.csv.gz", &gzip(b"10\n20\n30 40\n"));
    assert_err(
        load("diabetes", Some(&dir.0), false),
        &[&s(&y), "line 3 has 2 columns, expected 1"],
    );
    dir.write("diabetes_target.csv.gz", &gzip(b"10\n20\n30\n"));
    // A path to one of the files works too.
    let d = load("diabetes", Some(&x), false).unwrap();
    assert_eq!(
        (d.train.n, d.test.n, d.train.y.clone()),
        (3, 0, vec![10.0, 20.0, 30.0])
    );
    assert_eq!(d.test.example_len(), 0);
    // Constant columns get std 1 and standardise to 0.
    dir.write("diabetes_data_raw.csv.gz", &gzip(b"1 7\n3 7\n5 7\n"));
    let d = load("diabetes", Some(&dir.0), false).unwrap();
    let scaling = d.scaling.unwrap();
    assert_eq!((scaling.mean[1], scaling.std[1]), (7.0, 1.0));
    let expected = [-1.5f32.sqrt(), 0.0, 0.0, 0.0, 1.5f32.sqrt(), 0.0];
    assert!(
        d.train
            .x
            .iter()
            .zip(expected)
            .all(|(a, b)| (a - b).abs() < 1e-6),
        "{:?}",
        d.train.x
    );
}

//! Safetensors files: round trip, atomic write, error cases.

mod common;

use std::collections::BTreeMap;

use common::{TempDir, assert_err, s};
use dlc_data::tensorfile::{NamedTensor, read, write_atomic};

fn sample() -> (Vec<NamedTensor>, BTreeMap<String, String>) {
    let tensors = vec![
        NamedTensor {
            name: "layer.w".into(),
            shape: vec![2, 3],
            data: vec![1.0, -2.5, 3.25, f32::MIN_POSITIVE, 0.0, 1e30],
        },
        NamedTensor {
            name: "b".into(),
            shape: vec![3],
            data: vec![0.5, 0.25, -0.125],
        },
        NamedTensor {
            name: "scalar".into(),
            shape: vec![],
            data: vec![42.0],
        },
        NamedTensor {
            name: "empty".into(),
            shape: vec![0, 4],
            data: vec![],
        },
    ];
    let mut metadata = BTreeMap::new();
    metadata.insert("model".to_string(), "mlp".to_string());
    metadata.insert("scaling.mean".to_string(), "[1.0,2.0]".to_string());
    (tensors, metadata)
}

#[test]
fn round_trip_and_no_temp_file_left() {
    let dir = TempDir::new("st");
    let path = dir.join("model.safetensors");
    let (tensors, metadata) = sample();
    write_atomic(&path, &tensors, &metadata).unwrap();
    let (back, meta) = read(&path).unwrap();
    let mut expected = tensors.clone();
    expected.sort_by(|a, b| a.name.cmp(&b.name));
    assert_eq!(back, expected);
    assert_eq!(meta, metadata);
    let names: Vec<String> = std::fs::read_dir(&dir.0)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        vec!["model.safetensors".to_string()],
        "temporary file left behind"
    );

    // Standard layout: u64 LE header length, JSON header with __metadata__,
    // header padded to 8 bytes, data contiguous to the end of the file.
    let bytes = std::fs::read(&path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    assert_eq!(n % 8, 0);
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    assert_eq!(header["__metadata__"]["model"], "mlp");
    assert_eq!(header["layer.w"]["dtype"], "F32");
    assert_eq!(header["layer.w"]["shape"], serde_json::json!([2, 3]));
    let data_len = bytes.len() - 8 - n;
    assert_eq!(data_len, (6 + 3 + 1) * 4);

    // Overwriting replaces the file atomically; empty metadata reads back empty.
    let small = vec![NamedTensor {
        name: "x".into(),
        shape: vec![1],
        data: vec![7.0],
    }];
    write_atomic(&path, &small, &BTreeMap::new()).unwrap();
    assert_eq!(read(&path).unwrap(), (small, BTreeMap::new()));
    assert_eq!(std::fs::read_dir(&dir.0).unwrap().count(), 1);
}

#[test]
fn write_errors() {
    let dir = TempDir::new("st-write");
    let path = dir.join("bad.safetensors");
    let wrong = vec![NamedTensor {
        name: "w".into(),
        shape: vec![2, 2],
        data: vec![1.0; 3],
    }];
    assert_err(
        write_atomic(&path, &wrong, &BTreeMap::new()),
        &[&s(&path), "'w'", "[2, 2]", "3 values"],
    );
    let twice = vec![
        NamedTensor {
            name: "w".into(),
            shape: vec![1],
            data: vec![1.0],
        },
        NamedTensor {
            name: "w".into(),
            shape: vec![1],
            data: vec![2.0],
        },
    ];
    assert_err(
        write_atomic(&path, &twice, &BTreeMap::new()),
        &[&s(&path), "used twice"],
    );
    let into_missing = dir.join("no/such/dir/m.safetensors");
    let ok = vec![NamedTensor {
        name: "w".into(),
        shape: vec![1],
        data: vec![1.0],
    }];
    assert_err(
        write_atomic(&into_missing, &ok, &BTreeMap::new()),
        &[&s(&into_missing), "cannot write"],
    );
    assert_eq!(
        std::fs::read_dir(&dir.0).unwrap().count(),
        0,
        "nothing may be left behind"
    );
}

#[test]
fn read_errors() {
    let dir = TempDir::new("st-read");
    let missing = dir.join("missing.safetensors");
    assert_err(read(&missing), &[&s(&missing), "not found"]);
    let garbage = dir.write(
        "garbage.safetensors",
        b"this is not a safetensors file at all",
    );
    assert_err(read(&garbage), &[&s(&garbage), "not a valid safetensors"]);
    let tiny = dir.write("tiny.safetensors", b"abc");
    assert_err(read(&tiny), &[&s(&tiny), "not a valid safetensors"]);

    // Truncated: a valid file cut short.
    let good = dir.join("good.safetensors");
    let (tensors, metadata) = sample();
    write_atomic(&good, &tensors, &metadata).unwrap();
    let bytes = std::fs::read(&good).unwrap();
    let cut = dir.write("cut.safetensors", &bytes[..bytes.len() - 4]);
    assert_err(read(&cut), &[&s(&cut), "truncated"]);

    // A non-F32 tensor (F64, written by hand).
    let header = br#"{"d":{"dtype":"F64","shape":[1],"data_offsets":[0,8]}}"#;
    let mut padded = header.to_vec();
    while !padded.len().is_multiple_of(8) {
        padded.push(b' ');
    }
    let mut file = (padded.len() as u64).to_le_bytes().to_vec();
    file.extend(&padded);
    file.extend(1.5f64.to_le_bytes());
    let f64_file = dir.write("f64.safetensors", &file);
    assert_err(read(&f64_file), &[&s(&f64_file), "'d'", "F64", "only F32"]);
}

#[test]
fn same_contents_give_the_same_bytes() {
    let dir = TempDir::new("tensorfile-bytes");
    let (tensors, mut metadata) = sample();
    for i in 0..20 {
        metadata.insert(format!("key{i}"), i.to_string());
    }
    let (a, b) = (dir.join("a.safetensors"), dir.join("b.safetensors"));
    write_atomic(&a, &tensors, &metadata).unwrap();
    write_atomic(&b, &tensors, &metadata).unwrap();
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    let (back, meta) = read(&a).unwrap();
    assert_eq!(meta, metadata);
    assert_eq!(back.len(), tensors.len());
}

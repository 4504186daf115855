//! CSV files through `--data breast_cancer=FILE` (a header line, then rows of numbers
//! and a label), `--data digits=FILE` (sklearn's digits: 64 pixels and a label per row)
//! and `--data diabetes=DIR` (features and targets, each gzipped or not): the first byte
//! picks which.
#![no_main]
mod common;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let validation = pick & 8 != 0;
    match pick % 3 {
        0 => {
            let p = common::scratch("breast_cancer.csv");
            common::put(&p, rest);
            let _ = dlc_data::load("breast_cancer", Some(&p), validation);
        }
        1 => {
            let p = common::scratch("digits.csv");
            common::put(&p, rest);
            let _ = dlc_data::load("digits", Some(&p), validation);
        }
        _ => {
            // The input's first half the features, the rest the targets.
            let dir = common::scratch("diabetes");
            std::fs::create_dir_all(&dir).expect("scratch folder");
            let (x, y) = rest.split_at(rest.len() / 2);
            common::put(&dir.join("diabetes_data_raw.csv"), x);
            common::put(&dir.join("diabetes_target.csv"), y);
            let _ = dlc_data::load("diabetes", Some(&dir), validation);
        }
    }
});

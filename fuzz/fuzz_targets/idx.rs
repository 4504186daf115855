//! IDX files (MNIST, Fashion-MNIST) through `--data mnist=DIR`: the first byte picks which
//! of the four files (training or test, images or labels) the rest of the input becomes,
//! and whether it is named `.gz` (then it is read as a gzip stream); the other three files
//! are small valid ones.
#![no_main]
mod common;

use libfuzzer_sys::fuzz_target;

/// A valid IDX image file of `n` images of 2x2 pixels, and its label file.
fn images(n: u8) -> Vec<u8> {
    let mut b = vec![0, 0, 8, 3, 0, 0, 0, n, 0, 0, 0, 2, 0, 0, 0, 2];
    b.extend((0..4 * n).map(|i| i.wrapping_mul(37)));
    b
}

fn labels(n: u8) -> Vec<u8> {
    let mut b = vec![0, 0, 8, 1, 0, 0, 0, n];
    b.extend((0..n).map(|i| i % 10));
    b
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let dir = common::scratch("mnist");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch folder");
    let files = [
        ("train-images-idx3-ubyte", images(7)),
        ("train-labels-idx1-ubyte", labels(7)),
        ("t10k-images-idx3-ubyte", images(3)),
        ("t10k-labels-idx1-ubyte", labels(3)),
    ];
    for (k, (name, valid)) in files.iter().enumerate() {
        if k == usize::from(pick % 4) {
            let name = if pick & 4 != 0 {
                format!("{name}.gz")
            } else {
                name.to_string()
            };
            common::put(&dir.join(name), rest);
        } else {
            common::put(&dir.join(name), valid);
        }
    }
    let _ = dlc_data::load("mnist", Some(&dir), pick & 8 != 0);
});

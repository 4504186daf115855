//! `point_mnist` (`--data point_mnist=DIR`, an MNIST folder): every digit as a set of 2-D
//! points, the pixels of value ≥ 128, for point-cloud models. Each set has `points`
//! points (a data-set argument, 128 by default): the ink pixels' coordinates in an order
//! drawn from a counter-based generator keyed by the split and the image (the first
//! `points` of them, or all of them repeated cyclically when there are fewer), scaled to
//! [−1, 1] (x right, y up). With `shuffle_points` the points of each set are permuted once
//! more, which a model that ignores the order of the points does not notice.

use std::path::Path;

use crate::{DataError, Dataset, Split};

/// SplitMix64's finaliser.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Random bits for (stream, set, draw).
fn bits(stream: u64, set: u64, draw: u64) -> u64 {
    mix(
        mix(mix(stream ^ 0x9e37_79b9_7f4a_7c15) ^ set.wrapping_mul(0xd1b5_4a32_d192_ed03))
            ^ draw.wrapping_mul(0x8cb9_2ba7_2f3d_8dd7),
    )
}

/// Fisher–Yates with the counter-based draws of (stream, set).
fn shuffle<T>(v: &mut [T], stream: u64, set: u64) {
    for i in (1..v.len()).rev() {
        let j = (bits(stream, set, i as u64) % (i as u64 + 1)) as usize;
        v.swap(i, j);
    }
}

const SIDE: usize = 28;

fn to_points(images: &Split, stream: u64, points: usize, reshuffle: bool) -> Split {
    let mut x = Vec::with_capacity(images.n * points * 2);
    let per = SIDE * SIDE;
    for i in 0..images.n {
        let img = &images.x[i * per..(i + 1) * per];
        // Pixels were scaled to [0, 1]: 128 / 255 and above is ink.
        let mut ink: Vec<(f32, f32)> = (0..per)
            .filter(|&p| img[p] * 255.0 >= 127.5)
            .map(|p| {
                let (r, c) = (p / SIDE, p % SIDE);
                let scale = |v: usize| v as f32 / (SIDE - 1) as f32 * 2.0 - 1.0;
                (scale(c), -scale(r))
            })
            .collect();
        if ink.is_empty() {
            ink.push((0.0, 0.0));
        }
        shuffle(&mut ink, stream, i as u64);
        let mut set: Vec<(f32, f32)> = (0..points).map(|k| ink[k % ink.len()]).collect();
        if reshuffle {
            shuffle(&mut set, stream ^ 0x5eed_5eed, i as u64);
        }
        for (a, b) in set {
            x.push(a);
            x.push(b);
        }
    }
    Split {
        x,
        y: images.y.clone(),
        n: images.n,
    }
}

/// Load MNIST from `dir` and turn every image into a point set.
pub(crate) fn load_point_mnist(
    dir: &Path,
    validation: bool,
    points: usize,
    reshuffle: bool,
) -> Result<Dataset, DataError> {
    let images = crate::idx::load_images("mnist", dir, validation)?;
    Ok(Dataset {
        name: "point_mnist".into(),
        source: images.source.clone(),
        task: images.task,
        x_shape: vec![points, 2],
        y_shape: images.y_shape.clone(),
        train: to_points(&images.train, 1, points, reshuffle),
        val: images
            .val
            .as_ref()
            .map(|v| to_points(v, 2, points, reshuffle)),
        test: to_points(&images.test, 3, points, reshuffle),
        scaling: None,
        vocab: None,
        sparse: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_repeat_ink_cyclically_and_stay_in_range() {
        let mut img = vec![0.0f32; SIDE * SIDE];
        img[0] = 1.0; // top left
        img[SIDE * SIDE - 1] = 0.6; // bottom right
        img[5] = 0.3; // not ink
        let split = Split {
            x: img,
            y: vec![7.0],
            n: 1,
        };
        let s = to_points(&split, 1, 5, false);
        let pts: Vec<(f32, f32)> = s.x.chunks(2).map(|p| (p[0], p[1])).collect();
        assert_eq!(pts.len(), 5);
        assert!(pts.iter().all(|p| *p == (-1.0, 1.0) || *p == (1.0, -1.0)));
        assert_eq!(pts[0], pts[2]);
        assert_ne!(pts[0], pts[1]);
        // Reshuffled: the same points, other order possible, same multiset.
        let t = to_points(&split, 1, 5, true);
        let mut a: Vec<_> =
            s.x.chunks(2)
                .map(|p| (p[0].to_bits(), p[1].to_bits()))
                .collect();
        let mut b: Vec<_> =
            t.x.chunks(2)
                .map(|p| (p[0].to_bits(), p[1].to_bits()))
                .collect();
        a.sort();
        b.sort();
        assert_eq!(a, b);
    }
}

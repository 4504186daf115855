//! Counter-based randomness: every random number is a pure function of
//! (seed, key, step, element index), so a dropout mask is the same on any engine, with or
//! without fusion, on any number of threads, and after resuming from a checkpoint.

/// SplitMix64's finaliser: a bijective mixer with good avalanche.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// 64 random bits for one element.
pub fn bits(seed: u64, key: u64, step: u64, index: u64) -> u64 {
    let a = mix(seed ^ 0x9e37_79b9_7f4a_7c15);
    let b = mix(a ^ key.wrapping_mul(0xd1b5_4a32_d192_ed03));
    let c = mix(b ^ step.wrapping_mul(0x8cb9_2ba7_2f3d_8dd7));
    mix(c ^ index.wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

/// The stream of step `t` of a scan run at training step `step`: random draws inside a
/// scan body use it in place of `step`, so every step of a recurrence draws anew (a
/// dropout mask per time step) and the same step of a backward scan draws the same.
pub fn fold(step: u64, t: u64) -> u64 {
    mix(mix(step ^ 0x5851_f42d_4c95_7f2d) ^ t.wrapping_add(1).wrapping_mul(0xa076_1d64_78bd_642f))
}

/// Uniform on [0, 1) with 24 random bits (exact in f32).
pub fn uniform(seed: u64, key: u64, step: u64, index: u64) -> f64 {
    (bits(seed, key, step, index) >> 40) as f64 * (1.0 / (1u64 << 24) as f64)
}

/// Standard normal by Box–Muller from two independent uniforms.
pub fn normal(seed: u64, key: u64, step: u64, index: u64) -> f64 {
    normal_of_bits(bits(seed, key, step, index))
}

/// Box–Muller on the two 24-bit uniforms of one element's bits.
pub fn normal_of_bits(h: u64) -> f64 {
    let u1 = ((h >> 40) as f64 + 0.5) * (1.0 / (1u64 << 24) as f64);
    let u2 = ((h >> 16) & 0xff_ffff) as f64 * (1.0 / (1u64 << 24) as f64);
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// A stable key for a name (FNV-1a), used to initialise parameters by name.
pub fn name_key(name: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_moments() {
        let n = 100_000;
        let xs: Vec<f64> = (0..n).map(|i| uniform(7, 3, 11, i)).collect();
        let mean = xs.iter().sum::<f64>() / n as f64;
        assert!((mean - 0.5).abs() < 0.01, "{mean}");
        assert!(xs.iter().all(|&x| (0.0..1.0).contains(&x)));
    }

    #[test]
    fn normal_moments() {
        let n = 100_000;
        let xs: Vec<f64> = (0..n).map(|i| normal(1, 2, 3, i)).collect();
        let mean = xs.iter().sum::<f64>() / n as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
        assert!(
            mean.abs() < 0.02 && (var - 1.0).abs() < 0.03,
            "{mean} {var}"
        );
    }

    #[test]
    fn streams_differ() {
        assert_ne!(bits(1, 1, 1, 1), bits(1, 1, 2, 1));
        assert_ne!(bits(1, 1, 1, 1), bits(1, 2, 1, 1));
        assert_ne!(bits(1, 1, 1, 1), bits(2, 1, 1, 1));
        assert_eq!(bits(5, 6, 7, 8), bits(5, 6, 7, 8));
    }
}

//! Products against a right operand packed once and reused: the recurrent matrix of a
//! scan step (`h · W_h` forward, `dz · W_hᵀ` backward).
//!
//! A scan runs its body T times with the same captured weights, and a step's product is
//! skinny (the batch's 32 rows against a [512, 2048] matrix). A general GEMM packs its
//! right operand on every call, and at these shapes the packing costs as much as the
//! arithmetic: 4 MB read and written per 67 MFLOP. Here the operand is packed once per
//! scan run into 16-column panels (k-major, zero-padded), and each step runs only the
//! micro-kernel: for every panel (32 KB at k = 512, kept in L1/L2), every 6-row tile of
//! A, with 12 AVX2 accumulators (6 rows × 2 vectors of 8 columns) over the whole k loop.
//! A is read in place through its strides (a broadcast per row and k), so transposed
//! operands cost nothing.
//!
//! Each element of C is one sequential FMA chain over k, whatever the tile or thread
//! split, so a product gives the same bits on any number of threads.
//!
//! The kernel needs AVX2 and FMA ([`available`]); without them the caller uses its
//! general GEMM.

/// Columns per panel: two 8-lane vectors.
const NR: usize = 16;
/// Rows per tile.
const MR: usize = 6;

/// A [k, n] right operand in panels of [`NR`] columns: element (p, j) at
/// `((j / NR) * k + p) * NR + j % NR`, the last panel zero-padded.
pub struct PackedB {
    pub k: usize,
    pub n: usize,
    data: Vec<f32>,
}

impl PackedB {
    /// Packs B, element (p, j) read at `b + p * b_rs + j * b_cs`.
    ///
    /// # Safety
    /// `b` must be valid for reads at every such offset for p < k, j < n.
    pub unsafe fn pack(k: usize, n: usize, b: *const f32, b_rs: isize, b_cs: isize) -> PackedB {
        let panels = n.div_ceil(NR);
        let mut data = vec![0.0f32; panels * k * NR];
        for (j0, panel) in (0..n).step_by(NR).zip(data.chunks_exact_mut(k * NR)) {
            let w = NR.min(n - j0);
            for (p, row) in panel.chunks_exact_mut(NR).enumerate() {
                for (c, v) in row[..w].iter_mut().enumerate() {
                    // SAFETY: p < k and j0 + c < n (contract).
                    *v = unsafe { *b.offset(p as isize * b_rs + (j0 + c) as isize * b_cs) };
                }
            }
        }
        PackedB { k, n, data }
    }
}

/// Whether this machine runs the packed kernel (AVX2 and FMA).
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// C = A·B for `m` rows: element (i, p) of A at `a + i * a_rs + p * a_cs`, row i of C at
/// `c + i * c_rs` (n contiguous floats, overwritten).
///
/// # Safety
/// [`available`] must hold; `a` valid for reads at every (i, p), i < m, p < `b.k`; `c`
/// valid for writes of `b.n` floats at every row i < m, overlapping neither A nor B.
#[cfg(target_arch = "x86_64")]
pub unsafe fn matmul(
    m: usize,
    a: *const f32,
    a_rs: isize,
    a_cs: isize,
    b: &PackedB,
    c: *mut f32,
    c_rs: isize,
) {
    let k = b.k;
    for (j0, panel) in (0..b.n).step_by(NR).zip(b.data.chunks_exact(k * NR)) {
        let w = NR.min(b.n - j0);
        let mut i = 0;
        while i < m {
            let rows = MR.min(m - i);
            // SAFETY: rows i..i + rows of A and C, columns j0..j0 + w of C (contract).
            unsafe {
                let ai = a.offset(i as isize * a_rs);
                let ci = c.offset(i as isize * c_rs + j0 as isize);
                let t = (ai, a_rs, a_cs, panel.as_ptr(), k, ci, c_rs, w);
                match rows {
                    6 => tile::<6>(t),
                    5 => tile::<5>(t),
                    4 => tile::<4>(t),
                    3 => tile::<3>(t),
                    2 => tile::<2>(t),
                    _ => tile::<1>(t),
                }
            }
            i += rows;
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
pub unsafe fn matmul(
    _: usize,
    _: *const f32,
    _: isize,
    _: isize,
    _: &PackedB,
    _: *mut f32,
    _: isize,
) {
    unreachable!("the packed kernel is x86-64 only: `available` is false")
}

/// (A at the tile's first row, a_rs, a_cs, the B panel, k, C at the tile, c_rs, columns).
#[cfg(target_arch = "x86_64")]
type Tile = (
    *const f32,
    isize,
    isize,
    *const f32,
    usize,
    *mut f32,
    isize,
    usize,
);

/// One R×16 tile of C (the first `w` columns stored).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn tile<const R: usize>((a, a_rs, a_cs, b, k, c, c_rs, w): Tile) {
    use std::arch::x86_64::*;
    let mut lo = [_mm256_setzero_ps(); R];
    let mut hi = [_mm256_setzero_ps(); R];
    for p in 0..k {
        // SAFETY: the panel holds k · NR floats; A's (i, p) are readable (contract).
        unsafe {
            let b0 = _mm256_loadu_ps(b.add(p * NR));
            let b1 = _mm256_loadu_ps(b.add(p * NR + 8));
            let ap = a.offset(p as isize * a_cs);
            for r in 0..R {
                let x = _mm256_broadcast_ss(&*ap.offset(r as isize * a_rs));
                lo[r] = _mm256_fmadd_ps(x, b0, lo[r]);
                hi[r] = _mm256_fmadd_ps(x, b1, hi[r]);
            }
        }
    }
    for r in 0..R {
        // SAFETY: row r of the tile has w ≤ 16 writable columns (contract).
        unsafe {
            let cr = c.offset(r as isize * c_rs);
            if w == NR {
                _mm256_storeu_ps(cr, lo[r]);
                _mm256_storeu_ps(cr.add(8), hi[r]);
            } else {
                let mut t = [0.0f32; NR];
                _mm256_storeu_ps(t.as_mut_ptr(), lo[r]);
                _mm256_storeu_ps(t.as_mut_ptr().add(8), hi[r]);
                std::ptr::copy_nonoverlapping(t.as_ptr(), cr, w);
            }
        }
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    /// Every tile height and a ragged last panel, against a plain triple loop, through
    /// both a row-major and a transposed A.
    #[test]
    fn packed_products_match_the_definition() {
        if !available() {
            return;
        }
        for (m, n, k) in [(1, 1, 1), (7, 17, 5), (13, 40, 33), (32, 64, 9)] {
            let a: Vec<f32> = (0..m * k)
                .map(|i| ((i * 7 % 11) as f32 - 5.0) / 4.0)
                .collect();
            let b: Vec<f32> = (0..k * n)
                .map(|i| ((i * 5 % 13) as f32 - 6.0) / 8.0)
                .collect();
            let want: Vec<f32> = (0..m * n)
                .map(|e| (0..k).map(|p| a[e / n * k + p] * b[p * n + e % n]).sum())
                .collect();
            // SAFETY: shapes as above.
            let pb = unsafe { PackedB::pack(k, n, b.as_ptr(), n as isize, 1) };
            let mut c = vec![f32::NAN; m * n];
            unsafe {
                matmul(
                    m,
                    a.as_ptr(),
                    k as isize,
                    1,
                    &pb,
                    c.as_mut_ptr(),
                    n as isize,
                )
            };
            for (x, y) in c.iter().zip(&want) {
                assert!(
                    (x - y).abs() <= 1e-4 * y.abs().max(1.0),
                    "{m}x{n}x{k}: {x} vs {y}"
                );
            }
            // Aᵀ stored [k, m]: (i, p) at p * m + i.
            let at: Vec<f32> = (0..k * m).map(|e| a[(e % m) * k + e / m]).collect();
            let mut c2 = vec![f32::NAN; m * n];
            unsafe {
                matmul(
                    m,
                    at.as_ptr(),
                    1,
                    m as isize,
                    &pb,
                    c2.as_mut_ptr(),
                    n as isize,
                )
            };
            assert_eq!(c, c2, "{m}x{n}x{k}: same bits through a transposed A");
        }
    }
}

//! The GEMM core against a naive f64 triple loop: random shapes (1, sizes that are not
//! multiples of the tile or of the k unroll, several cache blocks), all four transpose
//! combinations through strides, padded leading dimensions, row ranges, and both paths.

use dlc_compiler::jit::sgemm::{self, Blocking, GemmPath, MR, NR, Sgemm, UNROLL};
use proptest::prelude::*;

/// A random matrix problem with its storage layout.
#[derive(Clone, Debug)]
struct Case {
    m: usize,
    n: usize,
    k: usize,
    /// A stored transposed (k×m row-major) rather than m×k.
    ta: bool,
    /// B stored transposed (n×k row-major) rather than k×n.
    tb: bool,
    /// Extra elements at the end of every stored row of A, B and C.
    pad: usize,
    seed: u64,
}

struct Stored {
    a: Vec<f32>,
    a_rs: isize,
    a_cs: isize,
    b: Vec<f32>,
    b_rs: isize,
    b_cs: isize,
    c_rs: usize,
}

fn values(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            s ^= s >> 12;
            s ^= s << 25;
            s ^= s >> 27;
            let r = s.wrapping_mul(0x2545_f491_4f6c_dd1d);
            ((r >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn store(c: &Case) -> Stored {
    let (m, n, k, pad) = (c.m, c.n, c.k, c.pad);
    // Row-major storage of A (or Aᵀ) with `pad` extra elements per row.
    let (a_rows, a_cols) = if c.ta { (k, m) } else { (m, k) };
    let lda = a_cols + pad;
    let a = values(a_rows * lda, c.seed);
    let (a_rs, a_cs) = if c.ta {
        (1, lda as isize)
    } else {
        (lda as isize, 1)
    };
    let (b_rows, b_cols) = if c.tb { (n, k) } else { (k, n) };
    let ldb = b_cols + pad;
    let b = values(b_rows * ldb, c.seed ^ 0xabcdef);
    let (b_rs, b_cs) = if c.tb {
        (1, ldb as isize)
    } else {
        (ldb as isize, 1)
    };
    Stored {
        a,
        a_rs,
        a_cs,
        b,
        b_rs,
        b_cs,
        c_rs: n + pad,
    }
}

/// Exact-ish product in f64 and, per element, Σ|a||b| (for the error bound).
fn reference(c: &Case, s: &Stored) -> (Vec<f64>, Vec<f64>) {
    let (m, n, k) = (c.m, c.n, c.k);
    let at = |i: usize, p: usize| s.a[(i as isize * s.a_rs + p as isize * s.a_cs) as usize] as f64;
    let bt = |p: usize, j: usize| s.b[(p as isize * s.b_rs + j as isize * s.b_cs) as usize] as f64;
    let mut r = vec![0.0; m * n];
    let mut mag = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            for p in 0..k {
                r[i * n + j] += at(i, p) * bt(p, j);
                mag[i * n + j] += (at(i, p) * bt(p, j)).abs();
            }
        }
    }
    (r, mag)
}

/// Runs `f(m, a, b, c)` on rows [r0, r1) with pointers advanced to row r0, on a C full of
/// NaN (so reading C before writing it shows), and checks rows [r0, r1) against the
/// reference, within the worst-case rounding bound of an f32 sum of k products
/// (k·2⁻²⁴·Σ|a·b|, doubled), and that nothing else of C (other rows, the padding) changed.
fn check(
    c: &Case,
    r0: usize,
    r1: usize,
    f: impl FnOnce(usize, *const f32, *const f32, *mut f32, &Stored),
) -> Result<(), TestCaseError> {
    let s = store(c);
    let (r, mag) = reference(c, &s);
    let mut out = vec![f32::NAN; c.m.max(1) * s.c_rs];
    // SAFETY (of the offsets): r0 ≤ m, so they stay inside (or one past) the buffers.
    let (ap, cp) = unsafe {
        (
            s.a.as_ptr().offset(r0 as isize * s.a_rs),
            out.as_mut_ptr().add(r0 * s.c_rs),
        )
    };
    f(r1 - r0, ap, s.b.as_ptr(), cp, &s);
    let u = f32::EPSILON as f64 / 2.0;
    for i in 0..c.m {
        for j in 0..s.c_rs {
            let got = out[i * s.c_rs + j];
            if i < r0 || i >= r1 || j >= c.n {
                prop_assert!(got.is_nan(), "C({i},{j}) outside the product was written");
                continue;
            }
            let (want, bound) = (r[i * c.n + j], mag[i * c.n + j]);
            let tol = 2.0 * (c.k as f64 + 1.0) * u * bound + 1e-30;
            prop_assert!(
                (got as f64 - want).abs() <= tol,
                "C({i},{j}) = {got}, expected {want} (±{tol}) for {c:?}"
            );
        }
    }
    Ok(())
}

fn sizes() -> impl Strategy<Value = usize> {
    prop_oneof![
        Just(1usize),
        1usize..=3 * MR + 1,
        1usize..=70,
        Just(MR),
        Just(NR),
        Just(NR + 1),
    ]
}

fn cases() -> impl Strategy<Value = Case> {
    (
        sizes(),
        sizes(),
        sizes(),
        any::<bool>(),
        any::<bool>(),
        0usize..3,
        any::<u64>(),
    )
        .prop_map(|(m, n, k, ta, tb, pad, seed)| Case {
            m,
            n,
            k,
            ta,
            tb,
            pad,
            seed,
        })
}

/// Some rows [r0, r1) of m (possibly all of them, possibly none).
fn rows(m: usize, x: u64, y: u64) -> (usize, usize) {
    let a = (x % (m as u64 + 1)) as usize;
    let b = (y % (m as u64 + 1)) as usize;
    (a.min(b), a.max(b))
}

fn blocked(c: &Case, blk: Blocking, r0: usize, r1: usize) -> Result<(), TestCaseError> {
    check(c, r0, r1, |m, a, b, out, s| {
        // SAFETY: pointers and strides describe the buffers made by `store`; C has
        // `m` rows of `c_rs` floats from `out` on.
        unsafe {
            Sgemm::global().matmul_blocked(
                blk,
                m,
                c.n,
                c.k,
                a,
                s.a_rs,
                s.a_cs,
                b,
                s.b_rs,
                s.b_cs,
                out,
                s.c_rs as isize,
            )
        }
    })
}

fn through(c: &Case, path: GemmPath, r0: usize, r1: usize) -> Result<(), TestCaseError> {
    check(c, r0, r1, |m, a, b, out, s| {
        // SAFETY: as in `blocked`.
        unsafe {
            sgemm::matmul(
                path,
                m,
                c.n,
                c.k,
                a,
                s.a_rs,
                s.a_cs,
                b,
                s.b_rs,
                s.b_cs,
                out,
                s.c_rs as isize,
            )
        }
    })
}

/// `cases` random cases, after replaying the seeds committed in this file's sibling
/// `<this file>.proptest-regressions` (where a new failure's seed is also written, to be
/// committed).
fn replaying(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::WithSource("proptest-regressions"),
        )),
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(replaying(400))]

    /// The JIT path with the default blocking, all rows.
    #[test]
    fn jit_matches_reference(c in cases()) {
        through(&c, GemmPath::Jit, 0, c.m)?;
    }

    /// The JIT path on a row range.
    #[test]
    fn jit_row_ranges(c in cases(), x in any::<u64>(), y in any::<u64>()) {
        let (r0, r1) = rows(c.m, x, y);
        through(&c, GemmPath::Jit, r0, r1)?;
    }

    /// Tiny cache blocks: many k slices (accumulation into C), many row and column
    /// blocks, edge tiles inside every block.
    #[test]
    fn jit_small_blocks(
        c in cases(),
        mc in 1usize..20,
        kc in 1usize..12,
        nc in 1usize..30,
        x in any::<u64>(),
        y in any::<u64>(),
    ) {
        let (r0, r1) = rows(c.m, x, y);
        blocked(&c, Blocking { mc, kc, nc }, r0, r1)?;
    }

    /// The crate path through the same interface.
    #[test]
    fn crate_matches_reference(c in cases(), x in any::<u64>(), y in any::<u64>()) {
        let (r0, r1) = rows(c.m, x, y);
        through(&c, GemmPath::Crate, r0, r1)?;
    }
}

/// `matmul_rows` over a partition of the rows gives the whole product, for both paths.
#[test]
fn row_blocks_through_matmul_rows() {
    for path in [GemmPath::Jit, GemmPath::Crate] {
        for (ta, tb) in [(false, false), (true, true)] {
            let c = Case {
                m: 29,
                n: 11,
                k: 19,
                ta,
                tb,
                pad: 2,
                seed: 3,
            };
            check(&c, 0, c.m, |m, a, b, out, s| {
                for (r0, r1) in [(0, 5), (5, 6), (6, 6), (6, 29)] {
                    assert!(r1 <= m);
                    // SAFETY: as in `blocked`; the ranges cover the rows once each.
                    unsafe {
                        sgemm::matmul_rows(
                            path,
                            r0,
                            r1,
                            c.n,
                            c.k,
                            a,
                            s.a_rs,
                            s.a_cs,
                            b,
                            s.b_rs,
                            s.b_cs,
                            out,
                            s.c_rs as isize,
                        )
                    };
                }
            })
            .unwrap();
        }
    }
}

/// Every transpose combination on shapes that leave edges in both dimensions and a k
/// tail after the unroll, across more than one default cache block.
#[test]
fn transposes_and_edges_at_block_sizes() {
    let shapes = [
        (1, 1, 1),
        (MR + 1, NR + 3, UNROLL + 1),
        (2 * MR - 1, 2 * NR - 1, 3 * UNROLL - 1),
        (97, 45, 301),
        (130, 17, 513),
        (5, 2051, 3),
    ];
    for (m, n, k) in shapes {
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            let c = Case {
                m,
                n,
                k,
                ta,
                tb,
                pad: 1,
                seed: (m * 31 + n * 7 + k) as u64,
            };
            through(&c, GemmPath::Jit, 0, m).unwrap();
            through(&c, GemmPath::Crate, 0, m).unwrap();
        }
    }
}

/// k = 0: C is zeroed, not left as it was.
#[test]
fn empty_sum_zeroes_c() {
    for path in [GemmPath::Jit, GemmPath::Crate] {
        let mut out = vec![f32::NAN; 6];
        // SAFETY: no element of A or B is read; C is 2×3.
        unsafe {
            sgemm::matmul(
                path,
                2,
                3,
                0,
                std::ptr::NonNull::dangling().as_ptr(),
                0,
                1,
                std::ptr::NonNull::dangling().as_ptr(),
                3,
                1,
                out.as_mut_ptr(),
                3,
            )
        };
        assert_eq!(out, vec![0.0; 6], "{path}");
    }
}

/// The two paths agree (within rounding) at a size where both are fast.
#[test]
fn paths_agree_at_512() {
    let c = Case {
        m: 512,
        n: 512,
        k: 512,
        ta: false,
        tb: true,
        pad: 0,
        seed: 7,
    };
    let s = store(&c);
    let mut outs = Vec::new();
    for path in [GemmPath::Jit, GemmPath::Crate] {
        let mut out = vec![0.0f32; 512 * 512];
        // SAFETY: 512×512 buffers described by `store`.
        unsafe {
            sgemm::matmul(
                path,
                512,
                512,
                512,
                s.a.as_ptr(),
                s.a_rs,
                s.a_cs,
                s.b.as_ptr(),
                s.b_rs,
                s.b_cs,
                out.as_mut_ptr(),
                512,
            )
        };
        outs.push(out);
    }
    let worst = outs[0]
        .iter()
        .zip(&outs[1])
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max);
    assert!(worst < 1e-3, "paths differ by {worst}");
}

/// The other micro-kernels `gemm_tune` measures compute the same products.
#[test]
fn alternative_kernels() {
    use dlc_compiler::jit::sgemm::Kernel;
    let mut kernels = Vec::new();
    for (mr, nr) in [(6, 8), (4, 12), (3, 16), (8, 4)] {
        for unroll in [1, 2, 4] {
            for (split_broadcasts, optimize) in [(false, true), (true, true), (true, false)] {
                kernels.push(Kernel {
                    mr,
                    nr,
                    unroll,
                    split_broadcasts,
                    optimize,
                    readonly_loads: true,
                });
            }
        }
    }
    kernels.push(Kernel {
        readonly_loads: false,
        ..dlc_compiler::jit::sgemm::KERNEL
    });
    for kc in kernels {
        let s = Sgemm::with_kernel(kc).unwrap();
        for (m, n, k, ta, tb) in [(13, 17, 11, false, true), (7, 9, 30, true, false)] {
            let c = Case {
                m,
                n,
                k,
                ta,
                tb,
                pad: 1,
                seed: 5,
            };
            let blk = Blocking {
                mc: 8,
                kc: 7,
                nc: 12,
            };
            check(&c, 0, m, |m, a, b, out, st| {
                // SAFETY: as in `blocked`.
                unsafe {
                    s.matmul_blocked(
                        blk,
                        m,
                        c.n,
                        c.k,
                        a,
                        st.a_rs,
                        st.a_cs,
                        b,
                        st.b_rs,
                        st.b_cs,
                        out,
                        st.c_rs as isize,
                    )
                }
            })
            .unwrap_or_else(|e| panic!("{kc:?}: {e}"));
        }
    }
}

//! Sparse matrices in CSR form as graph values (three inputs: `indptr`, `indices`,
//! `values`), and the native kernels of `spmm` (A·h: each output row is one CSR row's
//! combination of rows of h, rows split across threads) and `spmm_t` (Aᵀ·g: a scatter of
//! each row's contribution, split across threads by feature columns so that every output
//! element sums its terms in the same order as the reference, whatever the thread count).

use rayon::prelude::*;

/// The structure of a square CSR matrix, checked.
pub struct Csr {
    pub rows: usize,
    pub indptr: Vec<usize>,
    pub indices: Vec<usize>,
}

impl Csr {
    /// Read and check the structure: `indptr` of `rows + 1` non-decreasing offsets from 0 to
    /// the number of entries, `indices` in `0..rows`, as many values as indices. The arrays
    /// are read in place (the engines' f32 or f64 values, as f64).
    pub fn of(
        indptr: impl ExactSizeIterator<Item = f64>,
        indices: impl ExactSizeIterator<Item = f64>,
        values: usize,
        rows: usize,
    ) -> Result<Csr, String> {
        if indptr.len() != rows + 1 {
            return Err(format!(
                "sparse matrix: indptr has {} offsets for {rows} rows (needs {})",
                indptr.len(),
                rows + 1
            ));
        }
        let entries = indices.len();
        if entries != values {
            return Err(format!(
                "sparse matrix: {entries} indices but {values} values"
            ));
        }
        let whole = |v: f64| v >= 0.0 && v.fract() == 0.0;
        let mut ptr = Vec::with_capacity(rows + 1);
        for (r, p) in indptr.enumerate() {
            if !whole(p) || p as usize > entries || ptr.last().is_some_and(|&q| (p as usize) < q) {
                return Err(format!(
                    "sparse matrix: indptr[{r}] = {p} is not a valid offset"
                ));
            }
            ptr.push(p as usize);
        }
        if ptr[0] != 0 || ptr[rows] != entries {
            return Err(format!(
                "sparse matrix: indptr runs from {} to {}, not from 0 to the {} entries",
                ptr[0], ptr[rows], entries
            ));
        }
        let mut idx = Vec::with_capacity(entries);
        for (k, c) in indices.enumerate() {
            if !whole(c) || c as usize >= rows {
                return Err(format!(
                    "sparse matrix: column index {c} (entry {k}) is out of range for {rows} columns"
                ));
            }
            idx.push(c as usize);
        }
        Ok(Csr {
            rows,
            indptr: ptr,
            indices: idx,
        })
    }
}

/// `out = A·h` (`transposed`: `Aᵀ·h`) for f32 row-major [rows, f] matrices.
pub fn run(
    csr: &Csr,
    values: &[f32],
    h: &[f32],
    f: usize,
    out: &mut [f32],
    transposed: bool,
    threads: usize,
) {
    out.fill(0.0);
    if f == 0 {
        return;
    }
    let parts = threads.max(1);
    if !transposed {
        // Rows in fixed chunks; each output row is computed by one thread.
        let chunk = csr.rows.div_ceil(parts).max(1) * f;
        let work = |(i, o): (usize, &mut [f32])| {
            let first = i * chunk / f;
            for (dr, row) in o.chunks_mut(f).enumerate() {
                let r = first + dr;
                for k in csr.indptr[r]..csr.indptr[r + 1] {
                    let (v, src) = (values[k], &h[csr.indices[k] * f..][..f]);
                    for (d, s) in row.iter_mut().zip(src) {
                        *d += v * s;
                    }
                }
            }
        };
        if parts > 1 && csr.indices.len() * f > 1 << 16 {
            out.par_chunks_mut(chunk).enumerate().for_each(work);
        } else {
            out.chunks_mut(chunk).enumerate().for_each(work);
        }
    } else {
        // Feature columns in fixed ranges; within one, rows in order, as the reference.
        let cols = f.div_ceil(parts).max(1);
        let ranges: Vec<(usize, usize)> = (0..f)
            .step_by(cols)
            .map(|a| (a, (a + cols).min(f)))
            .collect();
        let base = out.as_mut_ptr() as usize;
        let work = |&(a, b): &(usize, usize)| {
            for r in 0..csr.rows {
                let src = &h[r * f..][..f];
                for k in csr.indptr[r]..csr.indptr[r + 1] {
                    let (v, c) = (values[k], csr.indices[k]);
                    for j in a..b {
                        // SAFETY: ranges are disjoint column sets of `out`, so no two
                        // threads write one element; `out` outlives the scope.
                        unsafe {
                            let d = (base as *mut f32).add(c * f + j);
                            *d += v * src[j];
                        }
                    }
                }
            }
        };
        if ranges.len() > 1 && csr.indices.len() * f > 1 << 16 {
            ranges.par_iter().for_each(work);
        } else {
            ranges.iter().for_each(work);
        }
    }
}

/// The `k` nearest points of every point of `b` sets of `n` points of `c` numbers
/// (row-major [b, n, c]) into `out` [b, n, k] as f32 indices: by squared distance, ties by
/// the points' vectors compared lexicographically, then by index. Sets in parallel.
pub fn knn(points: &[f32], b: usize, n: usize, c: usize, k: usize, out: &mut [f32]) {
    if b == 0 || n == 0 || k == 0 {
        return;
    }
    let one = |(s, o): (usize, &mut [f32])| {
        let p = &points[s * n * c..(s + 1) * n * c];
        // The set transposed to [c, n], so that one point's distances to all others are
        // accumulated feature by feature across a row (a loop the compiler vectorises);
        // each distance still sums its features in order.
        let mut t = vec![0f32; n * c];
        for j in 0..n {
            for f in 0..c {
                t[f * n + j] = p[j * c + f];
            }
        }
        let mut dist = vec![0f32; n];
        let mut order: Vec<(f32, usize)> = Vec::with_capacity(n);
        for i in 0..n {
            let a = &p[i * c..(i + 1) * c];
            dist.iter_mut().for_each(|d| *d = 0.0);
            for (f, &x) in a.iter().enumerate() {
                for (d, &y) in dist.iter_mut().zip(&t[f * n..(f + 1) * n]) {
                    *d += (x - y) * (x - y);
                }
            }
            order.clear();
            order.extend(dist.iter().copied().zip(0..n));
            let by = |&(da, ja): &(f32, usize), &(db, jb): &(f32, usize)| {
                da.total_cmp(&db)
                    .then_with(|| {
                        let (u, v) = (&p[ja * c..(ja + 1) * c], &p[jb * c..(jb + 1) * c]);
                        u.iter()
                            .zip(v)
                            .map(|(x, y)| x.total_cmp(y))
                            .find(|o| o.is_ne())
                            .unwrap_or(std::cmp::Ordering::Equal)
                    })
                    .then(ja.cmp(&jb))
            };
            if k < n {
                order.select_nth_unstable_by(k - 1, by);
            }
            order[..k].sort_by(by);
            for (t, (_, j)) in order[..k].iter().enumerate() {
                o[i * k + t] = *j as f32;
            }
        }
    };
    out.par_chunks_mut(n * k).enumerate().for_each(one);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(indptr: &[f64], indices: &[f64], values: usize, rows: usize) -> Result<Csr, String> {
        Csr::of(
            indptr.iter().copied(),
            indices.iter().copied(),
            values,
            rows,
        )
    }

    #[test]
    fn nearest_neighbours_ignore_the_order_of_points() {
        // Points 0 and 2 are both at distance 1 from point 1: the tie goes to the smaller
        // vector, (0, 0) before (2, 0), whatever their indices.
        let p = [0.0, 0.0, 1.0, 0.0, 2.0, 0.0];
        let mut out = [0.0; 6];
        knn(&p, 1, 3, 2, 2, &mut out);
        assert_eq!(out, [0.0, 1.0, 1.0, 0.0, 2.0, 1.0]);
        let q = [2.0, 0.0, 1.0, 0.0, 0.0, 0.0];
        knn(&q, 1, 3, 2, 2, &mut out);
        // The point (1, 0) is index 1 in both; its second neighbour is (0, 0): index 2 here.
        assert_eq!(&out[2..4], &[1.0, 2.0]);
    }

    #[test]
    fn products_and_transposes() {
        // [[1, 2], [0, 3]] as CSR.
        let csr = check(&[0.0, 2.0, 3.0], &[0.0, 1.0, 1.0], 3, 2).unwrap();
        let v = [1.0, 2.0, 3.0];
        let h = [1.0, 10.0, 2.0, 20.0];
        let mut out = [0.0; 4];
        run(&csr, &v, &h, 2, &mut out, false, 2);
        assert_eq!(out, [5.0, 50.0, 6.0, 60.0]);
        run(&csr, &v, &h, 2, &mut out, true, 2);
        // Aᵀ = [[1, 0], [2, 3]].
        assert_eq!(out, [1.0, 10.0, 8.0, 80.0]);
        assert!(check(&[0.0, 2.0, 1.0], &[0.0, 1.0, 1.0], 3, 2).is_err());
        assert!(check(&[0.0, 2.0, 3.0], &[0.0, 2.0, 1.0], 3, 2).is_err());
        assert!(check(&[0.0, 3.0], &[0.0, 1.0, 1.0], 3, 2).is_err());
    }
}

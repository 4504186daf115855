//! Cora (`--data cora=DIR`), the plain-text form of the Planetoid files
//! (`features.csv`, `labels.csv`, `edges.csv`, `train_idx.txt`, `val_idx.txt`,
//! `test_idx.txt`; see ../shared/data/README.md §5), prepared as Kipf & Welling do:
//! every feature row divided by its sum, and the graph as the symmetric normalised
//! adjacency with self-loops Â = D^-1/2 (A + I) D^-1/2, a sparse input `adj`.
//!
//! Node classification is full-batch: every split holds all 2708 nodes (the graph needs
//! them all), and its labels are the class for the split's own nodes and −1 for the others,
//! which the loss masks out and the metrics skip.

use std::path::Path;

use crate::source::{label, read_file, require_dir, text};
use crate::{DataError, Dataset, Sparse, Split, Task};

/// Cora's classes: Theory, Reinforcement_Learning, Genetic_Algorithms, Neural_Networks,
/// Probabilistic_Methods, Case_Based, Rule_Learning.
pub(crate) const CORA_CLASSES: usize = 7;

fn read_lines(dir: &Path, name: &str) -> Result<(String, Vec<String>), DataError> {
    let path = dir.join(name);
    let file = label(&path);
    let body = text(&file, read_file(&path)?)?;
    Ok((file, body.lines().map(str::to_string).collect()))
}

fn number(file: &str, line: usize, what: &str, s: &str) -> Result<usize, DataError> {
    s.trim().parse::<usize>().map_err(|_| {
        DataError::in_file(file, format!("line {line}: `{}` is not a {what}", s.trim()))
    })
}

/// Load Cora from its folder.
pub(crate) fn load_cora(dir: &Path, validation: bool) -> Result<Dataset, DataError> {
    require_dir(
        dir,
        "the cora folder (features.csv, labels.csv, edges.csv, *_idx.txt)",
    )?;
    let (ffile, rows) = read_lines(dir, "features.csv")?;
    let n = rows.len();
    if n == 0 {
        return Err(DataError::in_file(&ffile, "no rows"));
    }
    let width = rows[0].split(',').count();
    let mut x = Vec::with_capacity(n * width);
    for (i, r) in rows.iter().enumerate() {
        let start = x.len();
        for v in r.split(',') {
            let f: f32 = v.trim().parse().map_err(|_| {
                DataError::in_file(
                    &ffile,
                    format!("line {}: `{}` is not a number", i + 1, v.trim()),
                )
            })?;
            x.push(f);
        }
        if x.len() - start != width {
            return Err(DataError::in_file(
                &ffile,
                format!(
                    "line {}: {} values, the first line has {width}",
                    i + 1,
                    x.len() - start
                ),
            ));
        }
        // Row-normalised, as Kipf & Welling's preprocessing.
        let sum: f32 = x[start..].iter().sum();
        if sum > 0.0 {
            for v in &mut x[start..] {
                *v /= sum;
            }
        }
    }
    let (lfile, labels) = read_lines(dir, "labels.csv")?;
    if labels.len() != n {
        return Err(DataError::in_file(
            &lfile,
            format!("{} labels for {n} nodes in features.csv", labels.len()),
        ));
    }
    let mut y = Vec::with_capacity(n);
    for (i, l) in labels.iter().enumerate() {
        let c = number(&lfile, i + 1, "class", l)?;
        if c >= CORA_CLASSES {
            return Err(DataError::in_file(
                &lfile,
                format!(
                    "line {}: class {c} is out of range 0..{}",
                    i + 1,
                    CORA_CLASSES - 1
                ),
            ));
        }
        y.push(c as f32);
    }
    // Neighbours of each node, both directions, and itself.
    let (efile, edges) = read_lines(dir, "edges.csv")?;
    let mut nbrs: Vec<Vec<usize>> = (0..n).map(|i| vec![i]).collect();
    for (i, e) in edges.iter().enumerate() {
        let Some((a, b)) = e.split_once(',') else {
            return Err(DataError::in_file(
                &efile,
                format!("line {}: expected `i,j`", i + 1),
            ));
        };
        let (a, b) = (
            number(&efile, i + 1, "node id", a)?,
            number(&efile, i + 1, "node id", b)?,
        );
        if a >= n || b >= n {
            return Err(DataError::in_file(
                &efile,
                format!(
                    "line {}: node {} is out of range for {n} nodes",
                    i + 1,
                    a.max(b)
                ),
            ));
        }
        if a != b {
            nbrs[a].push(b);
            nbrs[b].push(a);
        }
    }
    for l in &mut nbrs {
        l.sort_unstable();
        l.dedup();
    }
    let deg: Vec<f64> = nbrs.iter().map(|l| l.len() as f64).collect();
    let mut adj = Sparse {
        name: "adj".into(),
        indptr: vec![0.0],
        indices: Vec::new(),
        values: Vec::new(),
    };
    for (i, l) in nbrs.iter().enumerate() {
        for &j in l {
            adj.indices.push(j as f32);
            adj.values.push((1.0 / (deg[i] * deg[j]).sqrt()) as f32);
        }
        adj.indptr.push(adj.indices.len() as f32);
    }
    let split = |name: &str| -> Result<Split, DataError> {
        let (file, ids) = read_lines(dir, name)?;
        let mut ys = vec![-1.0f32; n];
        for (i, s) in ids.iter().enumerate() {
            let id = number(&file, i + 1, "node id", s)?;
            if id >= n {
                return Err(DataError::in_file(
                    &file,
                    format!("line {}: node {id} is out of range for {n} nodes", i + 1),
                ));
            }
            ys[id] = y[id];
        }
        Ok(Split {
            x: x.clone(),
            y: ys,
            n,
        })
    };
    Ok(Dataset {
        name: "cora".into(),
        source: label(dir),
        task: Task::Classification {
            classes: CORA_CLASSES,
        },
        x_shape: vec![width],
        y_shape: vec![],
        train: split("train_idx.txt")?,
        val: if validation {
            Some(split("val_idx.txt")?)
        } else {
            None
        },
        test: split("test_idx.txt")?,
        scaling: None,
        vocab: None,
        sparse: vec![adj],
    })
}

//! Predictive uncertainty of a classifier and out-of-distribution detection.
//!
//! The prediction is the class distribution averaged over T passes, p̄ = (1/T) Σ_t p_t, where
//! each p_t is the softmax of the model's `pred` (logits) on one pass. With
//! `mc_dropout(passes: T)` the passes run the training-mode graph, so every random op draws
//! anew (Monte Carlo dropout, Gal & Ghahramani 2016); without it there is one deterministic
//! pass. The predictive entropy H[p̄] splits into the expected entropy (1/T) Σ_t H[p_t], the
//! aleatoric part (noise the model sees in the data), and the rest, H[p̄] − (1/T) Σ_t H[p_t],
//! the mutual information between the prediction and the weights: the epistemic part (what
//! the model does not know), zero for one pass. Out-of-distribution detection scores each
//! input by H[p̄] and reports the area under the ROC curve with the in-distribution test
//! set as the negatives and the other data set's test set as the positives.

use crate::checkpoint::Tensors;
use crate::engine::Engine;
use crate::trainer::{batch, leaf_env, sparse_inputs};
use dlc_data::{Dataset, Split, Task};

/// Rows per run of the graph (a graph data set runs whole).
const CHUNK: usize = 1024;

/// The averaged prediction of every labelled position of a split.
pub struct Predictive {
    /// Mean class probabilities p̄, one row of `classes` per prediction.
    pub mean: Vec<f64>,
    /// The expected entropy (1/T) Σ_t H[p_t] of each prediction.
    pub expected_entropy: Vec<f64>,
    /// Each prediction's label (negative: none, as a graph's nodes outside the split).
    pub labels: Vec<f32>,
    pub classes: usize,
}

/// Averages of a split's predictions (those with a label ≥ 0).
#[derive(Clone, Debug, PartialEq)]
pub struct Summary {
    pub n: usize,
    /// Accuracy of argmax p̄.
    pub acc: f64,
    /// Mean −ln p̄(label).
    pub nll: f64,
    /// Mean predictive entropy H[p̄].
    pub entropy: f64,
    /// Mean expected entropy.
    pub aleatoric: f64,
    /// Mean mutual information.
    pub epistemic: f64,
}

/// Softmax of one row of logits into `out` (f64); returns its entropy in nats.
fn softmax_entropy(row: &[f32], out: &mut [f64]) -> f64 {
    let m = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
    let mut sum = 0.0;
    for (o, &v) in out.iter_mut().zip(row) {
        *o = (v as f64 - m).exp();
        sum += *o;
    }
    let mut h = 0.0;
    for o in out.iter_mut() {
        *o /= sum;
        if *o > 0.0 {
            h -= *o * o.ln();
        }
    }
    h
}

fn entropy(p: &[f64]) -> f64 {
    p.iter().filter(|&&q| q > 0.0).map(|&q| -q * q.ln()).sum()
}

/// Run `engine`'s `pred` on every row of `split` `passes` times and average the class
/// probabilities. Pass t of chunk c runs at step t·chunks + c, so every pass and every chunk
/// of rows draws its own random numbers (deterministic ones ignore the step).
pub fn predictive(
    engine: &Engine,
    params: &Tensors,
    (split, data): (&Split, &Dataset),
    classes: usize,
    seed: u64,
    passes: usize,
) -> Result<Predictive, String> {
    let chunk_rows = if data.sparse.is_empty() {
        CHUNK
    } else {
        split.n.max(1)
    };
    let rows: Vec<usize> = (0..split.n).collect();
    let chunks = rows.chunks(chunk_rows).count() as u64;
    let graph_inputs = sparse_inputs(data);
    let mut out = Predictive {
        mean: Vec::new(),
        expected_entropy: Vec::new(),
        labels: Vec::new(),
        classes,
    };
    let mut probs = vec![0.0f64; classes];
    for (c, chunk) in rows.chunks(chunk_rows).enumerate() {
        let (x, y) = batch(split, chunk, &data.x_shape, &data.y_shape);
        let preds = y.len();
        let mut mean = vec![0.0f64; preds * classes];
        let mut expected = vec![0.0f64; preds];
        for t in 0..passes as u64 {
            let mut env = leaf_env(params, seed, t * chunks + c as u64);
            env.values.insert("x".into(), x.clone());
            // (The evaluation graph computes the loss too.)
            env.values.insert("y".into(), y.clone());
            for (name, a) in &graph_inputs {
                env.values.insert(name.clone(), a.clone());
            }
            let pred = engine.run(&env, &["pred"])?.remove(0);
            if pred.len() != preds * classes {
                return Err(format!(
                    "predictive uncertainty needs forward to return one row of {classes} logits per label; it returned {:?} for labels {:?}",
                    pred.shape(),
                    y.shape()
                ));
            }
            let p = pred.as_standard_layout();
            let flat = p.as_slice().expect("standard layout");
            if let Some(at) = flat.iter().position(|v| !v.is_finite()) {
                return Err(format!(
                    "pass {} of {}: the model's logits are not finite ({} at example {}); the weights have diverged",
                    t + 1,
                    data.name,
                    flat[at],
                    chunk[(at / classes) / (preds / chunk.len()).max(1)]
                ));
            }
            for i in 0..preds {
                let h = softmax_entropy(&flat[i * classes..(i + 1) * classes], &mut probs);
                expected[i] += h;
                for (m, q) in mean[i * classes..(i + 1) * classes].iter_mut().zip(&probs) {
                    *m += q;
                }
            }
            engine.recycle(pred);
        }
        let scale = 1.0 / passes as f64;
        out.mean.extend(mean.iter().map(|m| m * scale));
        out.expected_entropy
            .extend(expected.iter().map(|h| h * scale));
        out.labels.extend(y.iter().copied());
    }
    Ok(out)
}

impl Predictive {
    /// The predictive entropy H[p̄] of each labelled prediction: the OOD score.
    pub fn scores(&self) -> Vec<f64> {
        self.rows().map(|(p, _, _)| entropy(p)).collect()
    }

    /// (p̄, expected entropy, label) of each prediction with a label.
    fn rows(&self) -> impl Iterator<Item = (&[f64], f64, f32)> {
        self.mean
            .chunks(self.classes)
            .zip(&self.expected_entropy)
            .zip(&self.labels)
            .filter(|(_, l)| **l >= 0.0)
            .map(|((p, &h), &l)| (p, h, l))
    }

    pub fn summary(&self) -> Summary {
        let (mut n, mut right, mut nll, mut ent, mut alea) = (0usize, 0usize, 0.0, 0.0, 0.0);
        for (p, h, label) in self.rows() {
            n += 1;
            let best = (0..p.len()).fold(0, |b, k| if p[k] > p[b] { k } else { b });
            right += usize::from(best as f32 == label);
            nll -= p
                .get(label as usize)
                .copied()
                .unwrap_or(0.0)
                .max(1e-12)
                .ln();
            ent += entropy(p);
            alea += h;
        }
        let d = n.max(1) as f64;
        Summary {
            n,
            acc: right as f64 / d,
            nll: nll / d,
            entropy: ent / d,
            aleatoric: alea / d,
            // H[p̄] ≥ mean H[p_t] by concavity; rounding can leave a hair below 0.
            epistemic: ((ent - alea) / d).max(0.0),
        }
    }
}

/// Area under the ROC curve of scores where higher means positive: the probability that a
/// random positive scores above a random negative, ties counting one half (the
/// Mann–Whitney U statistic over n_neg · n_pos).
pub fn auroc(negatives: &[f64], positives: &[f64]) -> f64 {
    let mut all: Vec<(f64, bool)> = negatives
        .iter()
        .map(|&s| (s, false))
        .chain(positives.iter().map(|&s| (s, true)))
        .collect();
    all.sort_by(|a, b| a.0.total_cmp(&b.0));
    // Sum of the positives' ranks (1-based), tied scores sharing their mean rank.
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < all.len() {
        let mut j = i;
        while j < all.len() && all[j].0.total_cmp(&all[i].0).is_eq() {
            j += 1;
        }
        let mean_rank = (i + 1 + j) as f64 / 2.0;
        rank_sum += mean_rank * all[i..j].iter().filter(|e| e.1).count() as f64;
        i = j;
    }
    let (np, nn) = (positives.len() as f64, negatives.len() as f64);
    if np == 0.0 || nn == 0.0 {
        return f64::NAN;
    }
    (rank_sum - np * (np + 1.0) / 2.0) / (np * nn)
}

/// The uncertainty figures of a trained classifier on its test set and, when given, on
/// another data set's test set: `passes`, `test_acc` and `test_nll` of the averaged
/// prediction, `entropy_in`, `aleatoric_in`, `epistemic_in`, and with `ood`: the data set's
/// name as `ood`, `entropy_ood`, `aleatoric_ood`, `epistemic_ood` and `ood_auroc`.
pub fn report(
    setup: &crate::session::Setup,
    params: &Tensors,
    data: &Dataset,
    seed: u64,
    ood: Option<&Dataset>,
) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    use serde_json::json;
    let (engine, passes) = match (&setup.stochastic_engine, setup.cfg.mc_dropout) {
        (Some(e), Some(t)) => (e, t),
        _ => (&setup.eval_engine, 1),
    };
    let Task::Classification { classes } = data.task else {
        return Err(format!(
            "predictive uncertainty needs a classifier; data set {} is not a classification task",
            data.name
        ));
    };
    if let Some(other) = ood
        && other.x_shape != data.x_shape
    {
        return Err(format!(
            "the out-of-distribution data set {} has inputs {:?}, but the model reads {} inputs {:?}",
            other.name, other.x_shape, data.name, data.x_shape
        ));
    }
    let inside = predictive(engine, params, (&data.test, data), classes, seed, passes)?;
    let s = inside.summary();
    let mut m = serde_json::Map::new();
    m.insert("passes".into(), json!(passes));
    m.insert("test_acc".into(), json!(s.acc));
    m.insert("test_nll".into(), json!(s.nll));
    m.insert("entropy_in".into(), json!(s.entropy));
    m.insert("aleatoric_in".into(), json!(s.aleatoric));
    m.insert("epistemic_in".into(), json!(s.epistemic));
    if let Some(other) = ood {
        let outside = predictive(engine, params, (&other.test, other), classes, seed, passes)?;
        let o = outside.summary();
        m.insert("ood".into(), json!(other.name));
        m.insert("entropy_ood".into(), json!(o.entropy));
        m.insert("aleatoric_ood".into(), json!(o.aleatoric));
        m.insert("epistemic_ood".into(), json!(o.epistemic));
        m.insert(
            "ood_auroc".into(),
            json!(auroc(&inside.scores(), &outside.scores())),
        );
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auroc_counts_pairs() {
        assert_eq!(auroc(&[0.1, 0.2], &[0.3, 0.4]), 1.0);
        assert_eq!(auroc(&[0.3, 0.4], &[0.1, 0.2]), 0.0);
        // Pairs (neg, pos): 0.1<0.2 ✓, 0.1<0.5 ✓, 0.3>0.2 ✗, 0.3<0.5 ✓ → 3/4.
        assert_eq!(auroc(&[0.1, 0.3], &[0.2, 0.5]), 0.75);
        // Ties count one half.
        assert_eq!(auroc(&[0.5, 0.5], &[0.5]), 0.5);
        assert_eq!(auroc(&[0.1, 0.5], &[0.5]), 0.75);
    }

    #[test]
    fn decomposition_of_two_passes() {
        // Two confident passes that disagree: expected entropy ≈ 0, mutual information
        // ≈ ln 2; two uniform passes: all aleatoric.
        let mut p = vec![0.0; 2];
        let h1 = softmax_entropy(&[20.0, -20.0], &mut p);
        let h2 = softmax_entropy(&[-20.0, 20.0], &mut p);
        let disagree = Predictive {
            mean: vec![0.5, 0.5],
            expected_entropy: vec![(h1 + h2) / 2.0],
            labels: vec![0.0],
            classes: 2,
        };
        let s = disagree.summary();
        assert!((s.entropy - std::f64::consts::LN_2).abs() < 1e-12);
        assert!(s.aleatoric < 1e-15 && (s.epistemic - std::f64::consts::LN_2).abs() < 1e-12);
        let h = softmax_entropy(&[1.0, 1.0], &mut p);
        assert_eq!(p, vec![0.5, 0.5]);
        let noisy = Predictive {
            mean: vec![0.5, 0.5],
            expected_entropy: vec![h],
            labels: vec![1.0],
            classes: 2,
        };
        let s = noisy.summary();
        assert!((s.aleatoric - std::f64::consts::LN_2).abs() < 1e-12 && s.epistemic == 0.0);
    }
}

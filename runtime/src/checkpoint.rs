//! Checkpoints: safetensors files with parameters under their dotted names, optimizer
//! state (`opt.KIND.PARAM`), early-stopping best weights (`best.PARAM`), the data scaling
//! (`scaling.mean`, `scaling.std`) and, as string metadata, epoch, step, seed and the
//! early-stopping counters, the command line's `--set` and `--data-arg` values (`set`,
//! `data_arg`: JSON objects of NAME → VALUE text), the data-set arguments in force
//! (`data_args`, a JSON object) and, for a text data set, the vocabulary (`vocab`: a JSON
//! string of the characters, in id order). Written atomically (temp file + rename).

use crate::session::Recorded;
use dlc_data::tensorfile::{self, NamedTensor};
use ndarray::{ArrayD, IxDyn};
use std::collections::BTreeMap;
use std::path::Path;

pub const FORMAT: &str = "dlc-checkpoint-1";

pub type Tensors = BTreeMap<String, ArrayD<f32>>;

#[derive(Clone, Debug, Default)]
pub struct Checkpoint {
    pub tensors: Tensors,
    pub meta: BTreeMap<String, String>,
}

impl Checkpoint {
    pub fn save(&self, path: &Path) -> Result<(), String> {
        let list: Vec<NamedTensor> = self
            .tensors
            .iter()
            .map(|(name, a)| NamedTensor {
                name: name.clone(),
                shape: a.shape().to_vec(),
                data: a.as_standard_layout().iter().copied().collect(),
            })
            .collect();
        let mut meta = self.meta.clone();
        meta.insert("format".into(), FORMAT.into());
        tensorfile::write_atomic(path, &list, &meta).map_err(|e| e.to_string())
    }

    pub fn load(path: &Path) -> Result<Checkpoint, String> {
        let (list, meta) = tensorfile::read(path).map_err(|e| e.to_string())?;
        if meta.get("format").map(String::as_str) != Some(FORMAT) {
            return Err(format!(
                "{}: not a dlc checkpoint (no `format: {FORMAT}` in its metadata)",
                path.display()
            ));
        }
        let mut tensors = Tensors::new();
        for t in list {
            let a = ArrayD::from_shape_vec(IxDyn(&t.shape), t.data)
                .map_err(|e| format!("{}: tensor {}: {e}", path.display(), t.name))?;
            tensors.insert(t.name, a);
        }
        Ok(Checkpoint { tensors, meta })
    }

    pub fn meta_num<T: std::str::FromStr>(&self, key: &str, path: &Path) -> Result<T, String> {
        let v = self
            .meta
            .get(key)
            .ok_or_else(|| format!("{}: checkpoint has no `{key}`", path.display()))?;
        v.parse().map_err(|_| {
            format!(
                "{}: checkpoint field `{key}` = {v:?} is not a number",
                path.display()
            )
        })
    }
}

/// The metadata key of the vocabulary.
pub const VOCAB_KEY: &str = "vocab";

/// The vocabulary a checkpoint was trained with (character-level text data sets such as
/// `songs`): the characters in id order, so that id `i` is `vocab[i]`. `None` when the
/// checkpoint has none (other data sets); an error when the entry is not a JSON string of
/// sorted distinct characters.
pub fn vocabulary(ck: &Checkpoint) -> Result<Option<Vec<char>>, String> {
    let Some(text) = ck.meta.get(VOCAB_KEY) else {
        return Ok(None);
    };
    let chars: Vec<char> = serde_json::from_str::<String>(text)
        .map_err(|e| format!("the checkpoint's vocabulary is not a JSON string: {e}"))?
        .chars()
        .collect();
    if chars.is_empty() || chars.windows(2).any(|w| w[0] >= w[1]) {
        return Err(
            "the checkpoint's vocabulary is not a list of sorted distinct characters".into(),
        );
    }
    Ok(Some(chars))
}

/// [`vocabulary`] of the checkpoint file at `path`.
pub fn read_vocabulary(path: &Path) -> Result<Option<Vec<char>>, String> {
    vocabulary(&Checkpoint::load(path)?).map_err(|e| format!("{}: {e}", path.display()))
}

/// The metadata value of a vocabulary.
pub fn vocab_meta(vocab: &[char]) -> String {
    serde_json::Value::String(vocab.iter().collect()).to_string()
}

/// NAME → VALUE pairs as a JSON object of strings (the `set` and `data_arg` entries).
pub fn pairs_meta(pairs: &[(String, String)]) -> String {
    let m: serde_json::Map<String, serde_json::Value> = pairs
        .iter()
        .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
        .collect();
    serde_json::Value::Object(m).to_string()
}

impl Checkpoint {
    /// The NAME → VALUE pairs of metadata entry `key` (empty when absent).
    fn pairs(&self, key: &str, path: &Path) -> Result<Vec<(String, String)>, String> {
        let Some(text) = self.meta.get(key) else {
            return Ok(Vec::new());
        };
        let bad = || {
            format!(
                "{}: checkpoint field `{key}` = {text:?} is not a JSON object of strings",
                path.display()
            )
        };
        let v: serde_json::Value = serde_json::from_str(text).map_err(|_| bad())?;
        let obj = v.as_object().ok_or_else(bad)?;
        obj.iter()
            .map(|(k, v)| Ok((k.clone(), v.as_str().ok_or_else(bad)?.to_string())))
            .collect()
    }

    /// What the checkpoint records of the command line it was trained with.
    pub fn recorded(&self, path: &Path) -> Result<Recorded, String> {
        Ok(Recorded {
            data: self.meta.get("data").cloned().unwrap_or_default(),
            sets: self.pairs("set", path)?,
            data_args: self.pairs("data_arg", path)?,
        })
    }
}

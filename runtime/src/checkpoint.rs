//! Checkpoints: safetensors files with parameters under their dotted names, optimizer
//! state (`opt.KIND.PARAM`), early-stopping best weights (`best.PARAM`), the data scaling
//! (`scaling.mean`, `scaling.std`) and, as string metadata, epoch, step, seed and the
//! early-stopping counters. Written atomically (temp file + rename).

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

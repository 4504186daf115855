//! F32 tensors in safetensors files, written atomically.
//!
//! The files are standard safetensors (8-byte little-endian header length,
//! JSON header with `dtype`/`shape`/`data_offsets` per tensor and an optional
//! `__metadata__` string map, then contiguous little-endian data), readable by
//! the `safetensors` Python package, numpy and PyTorch tooling.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use safetensors::tensor::Metadata;
use safetensors::{Dtype, SafeTensors, View};

use crate::DataError;
use crate::source::{io_error, label};

/// One named F32 tensor: `data` holds `prod(shape)` values, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct NamedTensor {
    /// Tensor name (unique within a file; `__metadata__` is reserved).
    pub name: String,
    /// Dimensions; `[]` is a scalar.
    pub shape: Vec<usize>,
    /// Values, row-major.
    pub data: Vec<f32>,
}

/// Little-endian bytes of one tensor, as the `safetensors` crate wants them.
struct F32Bytes {
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl View for F32Bytes {
    fn dtype(&self) -> Dtype {
        Dtype::F32
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

/// Serialise `tensors` and `metadata` to safetensors bytes (tensors sorted by
/// name). `file` names the destination in errors.
fn to_bytes(
    file: &str,
    tensors: &[NamedTensor],
    metadata: &BTreeMap<String, String>,
) -> Result<Vec<u8>, DataError> {
    let mut seen = BTreeSet::new();
    let mut views = Vec::with_capacity(tensors.len());
    for tensor in tensors {
        if tensor.name == "__metadata__" || !seen.insert(tensor.name.as_str()) {
            return Err(DataError::in_file(
                file,
                format!("tensor name '{}' is reserved or used twice", tensor.name),
            ));
        }
        let expected = tensor
            .shape
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d));
        if expected != Some(tensor.data.len()) {
            return Err(DataError::in_file(
                file,
                format!(
                    "tensor '{}' has shape {:?} but {} values",
                    tensor.name,
                    tensor.shape,
                    tensor.data.len()
                ),
            ));
        }
        let bytes = tensor.data.iter().flat_map(|v| v.to_le_bytes()).collect();
        views.push((
            tensor.name.clone(),
            F32Bytes {
                shape: tensor.shape.clone(),
                bytes,
            },
        ));
    }
    let info: Option<HashMap<String, String>> = (!metadata.is_empty()).then(|| {
        metadata
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    });
    let bytes = safetensors::serialize(views, info)
        .map_err(|e| DataError::in_file(file, format!("cannot serialise tensors: {e}")))?;
    canonical_header(file, bytes)
}

/// Rewrite the JSON header with its keys sorted (the metadata comes from a hash map), so
/// that the same tensors and metadata always give the same bytes.
fn canonical_header(file: &str, bytes: Vec<u8>) -> Result<Vec<u8>, DataError> {
    let bad = || DataError::in_file(file, "internal: unexpected safetensors layout");
    let n = u64::from_le_bytes(
        bytes
            .get(..8)
            .ok_or_else(bad)?
            .try_into()
            .map_err(|_| bad())?,
    ) as usize;
    let header = bytes.get(8..8 + n).ok_or_else(bad)?;
    let parsed: BTreeMap<String, serde_json::Value> =
        serde_json::from_slice(header).map_err(|_| bad())?;
    let sorted = |v: serde_json::Value| match v {
        serde_json::Value::Object(m) => {
            serde_json::to_value(m.into_iter().collect::<BTreeMap<_, _>>()).unwrap_or_default()
        }
        other => other,
    };
    let parsed: BTreeMap<String, serde_json::Value> =
        parsed.into_iter().map(|(k, v)| (k, sorted(v))).collect();
    let mut text = serde_json::to_vec(&parsed).map_err(|_| bad())?;
    // safetensors pads the header with spaces to a multiple of 8 bytes.
    while text.len() % 8 != 0 {
        text.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + text.len() + bytes.len() - 8 - n);
    out.extend_from_slice(&(text.len() as u64).to_le_bytes());
    out.extend_from_slice(&text);
    out.extend_from_slice(&bytes[8 + n..]);
    Ok(out)
}

/// The temporary sibling `<path>.tmp-<pid>` used by [`write_atomic`].
fn temp_path(path: &Path) -> Result<PathBuf, DataError> {
    let Some(file_name) = path.file_name() else {
        return Err(DataError::in_file(&label(path), "not a file path"));
    };
    let mut tmp = file_name.to_os_string();
    tmp.push(format!(".tmp-{}", std::process::id()));
    Ok(path.with_file_name(tmp))
}

/// Write `tmp` fully and flush it to disk.
fn write_synced(tmp: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut file = File::create(tmp)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Write F32 tensors plus string metadata as a safetensors file, atomically:
/// the bytes go to `<path>.tmp-<pid>` in the same folder, are fsynced, and the
/// temporary file is renamed over `path`. On failure the temporary file is
/// removed and `path` is left as it was.
pub fn write_atomic(
    path: &Path,
    tensors: &[NamedTensor],
    metadata: &BTreeMap<String, String>,
) -> Result<(), DataError> {
    let name = label(path);
    let bytes = to_bytes(&name, tensors, metadata)?;
    let tmp = temp_path(path)?;
    let written = write_synced(&tmp, &bytes).and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(DataError::in_file(&name, format!("cannot write: {e}")));
    }
    // Make the rename itself durable (best effort: not every platform can
    // open or sync a folder).
    if let Some(dir) = path.parent() {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        if let Ok(handle) = File::open(dir) {
            let _ = handle.sync_all();
        }
    }
    Ok(())
}

/// Read a safetensors file of F32 tensors: the tensors sorted by name and the
/// `__metadata__` map (empty when absent).
///
/// Errors: missing file, not a safetensors file, truncated, a dtype other
/// than F32.
pub fn read(path: &Path) -> Result<(Vec<NamedTensor>, BTreeMap<String, String>), DataError> {
    let name = label(path);
    let bytes = std::fs::read(path).map_err(|e| io_error(&name, &e))?;
    let bad = |e: safetensors::SafeTensorError| {
        DataError::in_file(
            &name,
            format!("not a valid safetensors file (or truncated): {e}"),
        )
    };
    let (_, header): (usize, Metadata) = SafeTensors::read_metadata(&bytes).map_err(bad)?;
    let file = SafeTensors::deserialize(&bytes).map_err(bad)?;
    let mut tensors = Vec::with_capacity(file.len());
    for (tensor_name, view) in file.tensors() {
        if view.dtype() != Dtype::F32 {
            return Err(DataError::in_file(
                &name,
                format!(
                    "tensor '{tensor_name}' has dtype {:?}; only F32 is supported",
                    view.dtype()
                ),
            ));
        }
        let data = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        tensors.push(NamedTensor {
            name: tensor_name,
            shape: view.shape().to_vec(),
            data,
        });
    }
    tensors.sort_by(|a, b| a.name.cmp(&b.name));
    let metadata = header
        .metadata()
        .as_ref()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default();
    Ok((tensors, metadata))
}

//! `dlc sample --out`: pictures (and tensors) of what an image model makes.
//!
//! For a model whose `forward` gives back an image of its input's shape (an autoencoder),
//! the first `count` test images of the data set are drawn above their reconstructions.
//! `.png` writes the grid; `.safetensors` writes the reconstructions as the tensor `samples`
//! [N, H, W] with values in [0, 1].

use crate::engine::{Engine, EngineKind};
use crate::picture::{Canvas, Rgb};
use dlc_compiler::interp::Env;
use dlc_compiler::lower::Lowered;
use ndarray::{ArrayD, Axis, IxDyn};
use std::path::Path;

/// Pixels per image pixel in a grid, and the gap between images.
const SCALE: u32 = 2;
const GAP: u32 = 4;
/// Images per row of a grid.
const PER_ROW: usize = 16;
const BACKGROUND: Rgb = [200, 200, 200];

/// What to write: a PNG grid or a safetensors file, by the path's extension.
pub enum OutKind {
    Png,
    Tensors,
}

impl OutKind {
    pub fn of(path: &Path) -> Result<OutKind, String> {
        match path.extension().and_then(|e| e.to_str()) {
            Some("png") => Ok(OutKind::Png),
            Some("safetensors") => Ok(OutKind::Tensors),
            _ => Err(format!(
                "--out {}: the file must end in .png (a picture) or .safetensors (the images as a tensor)",
                path.display()
            )),
        }
    }
}

/// The single input leaf of a lowered function (`forward` or `decode`), by name and node;
/// `what` says what the one input should be.
fn one_input(
    file: &Path,
    lowered: &Lowered,
    func: &str,
    what: &str,
) -> Result<(String, dlc_compiler::ir::NodeId), String> {
    let inputs = lowered
        .graph
        .leaves(|op| matches!(op, dlc_compiler::ops::Op::Input { .. }));
    match &inputs[..] {
        [one] => Ok(one.clone()),
        _ => Err(format!(
            "{}: `{func}` takes {} inputs; {what}",
            file.display(),
            inputs.len()
        )),
    }
}

/// The function's result (`pred`) for `value` as its input.
fn run_on(
    file: &Path,
    lowered: &Lowered,
    mut env: Env<f32>,
    input: String,
    value: ArrayD<f32>,
    kind: EngineKind,
) -> Result<ArrayD<f32>, String> {
    env.values.insert(input, value);
    let engine = Engine::new(kind, dlc_compiler::opt::optimize(&lowered.graph).graph, 1)?;
    let out = engine
        .run(&env, &["pred"])
        .map_err(|e| format!("{}: {e}", file.display()))?;
    out.into_iter()
        .next()
        .ok_or_else(|| "no result".to_string())
}

/// Reconstructions of `x` ([N, H, W]) by the model's `forward`, checked to be images of the
/// same shape.
pub fn reconstruct(
    file: &Path,
    lowered: &Lowered,
    env: Env<f32>,
    x: ArrayD<f32>,
    kind: EngineKind,
) -> Result<ArrayD<f32>, String> {
    let (name, _) = one_input(
        file,
        lowered,
        "forward",
        "--out draws what a model makes of one image",
    )?;
    let shape = x.shape().to_vec();
    let pred = run_on(file, lowered, env, name, x, kind)?;
    if pred.shape() != &shape[..] {
        return Err(format!(
            "{}: `forward` maps images {:?} to {:?}; --out draws reconstructions, so it needs a model whose forward gives back an image of its input's shape (an autoencoder)",
            file.display(),
            &shape[1..],
            &pred.shape()[1..]
        ));
    }
    Ok(pred)
}

/// Images from the model's `decode(z)`: `count` codes drawn from the prior N(0, I) (with
/// the counter-based generator, so a seed gives the same pictures), or with `traverse =
/// Some(k)` five prior codes each with dimension k set to 11 values from -3 to 3 (row by
/// row). Returns [N, H, W].
pub fn decode(
    file: &Path,
    lowered: &Lowered,
    env: Env<f32>,
    count: usize,
    seed: u64,
    traverse: Option<usize>,
    kind: EngineKind,
) -> Result<ArrayD<f32>, String> {
    let (name, z) = one_input(
        file,
        lowered,
        "decode",
        "it should take one batch of latent codes z: f32[B, latent]",
    )?;
    let latent = match &lowered.graph.ty(z).shape[..] {
        [_, dlc_compiler::types::Dim::Known(l)] => *l,
        s => {
            return Err(format!(
                "{}: `decode` takes codes of shape {}; it should be f32[B, latent]",
                file.display(),
                dlc_compiler::types::show_shape(s)
            ));
        }
    };
    // The prior's draws: key 0 (no graph op has it), step 0.
    let draw = |i: usize| dlc_compiler::rng::normal(seed, 0, 0, i as u64) as f32;
    let codes = match traverse {
        None => ArrayD::from_shape_fn(IxDyn(&[count, latent]), |ix| draw(ix[0] * latent + ix[1])),
        Some(k) if k >= latent => {
            return Err(format!(
                "--traverse {k}: the latent codes have {latent} dimensions (0 to {})",
                latent - 1
            ));
        }
        Some(k) => ArrayD::from_shape_fn(IxDyn(&[5 * 11, latent]), |ix| {
            let (row, step) = (ix[0] / 11, ix[0] % 11);
            if ix[1] == k {
                -3.0 + 0.6 * step as f32
            } else {
                draw(row * latent + ix[1])
            }
        }),
    };
    let images = run_on(file, lowered, env, name, codes, kind)?;
    if images.ndim() != 3 {
        return Err(format!(
            "{}: `decode` gives {:?}; it should give images [B, height, width]",
            file.display(),
            images.shape()
        ));
    }
    Ok(images)
}

/// A grid of rows of images: `rows[r]` holds one [N, H, W] stack per band; each band's
/// images are drawn in order, PER_ROW to a line, bands interleaved line by line (the
/// originals' line above their reconstructions' line).
pub fn grid(bands: &[&ArrayD<f32>]) -> Result<Canvas, String> {
    grid_lines(bands, PER_ROW)
}

/// [`grid`] with `per_line` images to a line.
pub fn grid_lines(bands: &[&ArrayD<f32>], per_line: usize) -> Result<Canvas, String> {
    let first = bands.first().ok_or("nothing to draw")?;
    let (n, h, w) = match first.shape() {
        [n, h, w] => (*n, *h as u32, *w as u32),
        s => return Err(format!("images are [N, H, W], found {s:?}")),
    };
    let cols = n.clamp(1, per_line);
    let lines = n.div_ceil(per_line).max(1) * bands.len();
    let (tw, th) = (w * SCALE + GAP, h * SCALE + GAP);
    let mut c = Canvas::new(cols as u32 * tw + GAP, lines as u32 * th + GAP, BACKGROUND);
    for (b, band) in bands.iter().enumerate() {
        for (i, img) in band.axis_iter(Axis(0)).enumerate() {
            let line = (i / per_line) * bands.len() + b;
            let (x0, y0) = (GAP + (i % per_line) as u32 * tw, GAP + line as u32 * th);
            for ((y, x), &v) in img
                .into_dimensionality::<ndarray::Ix2>()
                .map_err(|e| e.to_string())?
                .indexed_iter()
            {
                let g = (v.clamp(0.0, 1.0) * 255.0).round() as u8;
                let (px, py) = (x0 + x as u32 * SCALE, y0 + y as u32 * SCALE);
                c.rect(
                    px as i64,
                    py as i64,
                    (px + SCALE) as i64,
                    (py + SCALE) as i64,
                    [g, g, g],
                );
            }
        }
    }
    Ok(c)
}

/// Writes `samples` ([N, H, W]) as the tensor `samples`, values clamped to [0, 1].
pub fn save_tensors(path: &Path, samples: &ArrayD<f32>) -> Result<(), String> {
    let t = dlc_data::tensorfile::NamedTensor {
        name: "samples".into(),
        shape: samples.shape().to_vec(),
        data: samples.iter().map(|v| v.clamp(0.0, 1.0)).collect(),
    };
    dlc_data::tensorfile::write_atomic(path, &[t], &Default::default()).map_err(|e| e.to_string())
}

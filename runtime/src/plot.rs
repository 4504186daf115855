//! `dlc plot`: a metrics file's per-epoch curves as a PNG.
//!
//! Each line of a metrics file (`dlc train --metrics`) that reports an epoch gives one
//! point per numeric field. Without `--fields`, the curves are what a Keras user plots
//! after `model.fit`: every loss and task metric (`train_loss`, `val_loss`, `test_mse`, …)
//! in a left panel and the accuracies in a right one (one panel when the run has no
//! accuracy). With `--fields a,b`, those fields, split the same way. A run on an
//! environment has a line per episode instead: its curves are over episodes, by default
//! the return of each episode and of the periodic evaluations; an architecture search a
//! line per controller step: by default its reward and baseline.

use crate::picture::{Anchor, BLACK, Canvas, GRID, Rgb, WHITE};
use serde_json::{Map, Value};
use std::path::Path;

/// Suffixes of the fields drawn by default.
const DEFAULT_SUFFIXES: [&str; 8] = [
    "_loss",
    "_acc",
    "_accuracy",
    "_r2",
    "_mse",
    "_recon",
    "_kl",
    "_return",
];

/// Whether a field is a score in [0, 1] (drawn in the right-hand panel).
fn is_score(name: &str) -> bool {
    ["_acc", "accuracy", "_r2"]
        .iter()
        .any(|s| name.ends_with(s))
}

/// One panel's size in pixels.
const PANEL: (u32, u32) = (640, 420);

/// Curve colours (matplotlib's first ten).
const COLORS: [Rgb; 10] = [
    [31, 119, 180],
    [255, 127, 14],
    [44, 160, 44],
    [214, 39, 40],
    [148, 103, 189],
    [140, 86, 75],
    [227, 119, 194],
    [127, 127, 127],
    [188, 189, 34],
    [23, 190, 207],
];

/// One curve: a field's (epoch, value) points in file order.
pub struct Curve {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// The per-epoch lines of a metrics file (or, for a run on an environment, its
/// per-episode lines), each as its JSON object, with the name of their x axis. Errors name
/// the file and the line.
fn epoch_lines(path: &Path) -> Result<(&'static str, Vec<Map<String, Value>>), String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("{}: cannot read the metrics file: {e}", path.display()))?;
    let mut out = Vec::new();
    let mut episodes = Vec::new();
    let mut steps = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(line).map_err(|e| {
            format!(
                "{}:{}: not a metrics line (JSON): {e}",
                path.display(),
                i + 1
            )
        })?;
        let Value::Object(m) = v else {
            return Err(format!(
                "{}:{}: a metrics line is a JSON object",
                path.display(),
                i + 1
            ));
        };
        // Per-epoch lines; the line written after early stopping (`restored_epoch`) is not.
        if m.get("epoch").and_then(Value::as_f64).is_some() && !m.contains_key("restored_epoch") {
            out.push(m);
        } else if m.get("episode").and_then(Value::as_f64).is_some() {
            episodes.push(m);
        } else if m.get("controller_step").and_then(Value::as_f64).is_some() {
            steps.push(m);
        }
    }
    if out.is_empty() && !episodes.is_empty() {
        return Ok(("episode", episodes));
    }
    if out.is_empty() && !steps.is_empty() {
        return Ok(("controller_step", steps));
    }
    if out.is_empty() {
        return Err(format!(
            "{}: no epoch in the metrics file (it is empty, or training wrote no epoch yet)",
            path.display()
        ));
    }
    Ok(("epoch", out))
}

/// The curves to draw: the named fields, or by default every loss, accuracy and task
/// metric present.
pub fn curves(path: &Path, fields: Option<&[String]>) -> Result<Vec<Curve>, String> {
    Ok(curves_over(path, fields)?.1)
}

/// [`curves`] and the name of their x axis (`epoch`, or `episode` for a run on an
/// environment).
pub fn curves_over(
    path: &Path,
    fields: Option<&[String]>,
) -> Result<(&'static str, Vec<Curve>), String> {
    let (axis, lines) = epoch_lines(path)?;
    let mut present: Vec<String> = Vec::new();
    for m in &lines {
        for (k, v) in m {
            if k != axis && v.is_number() && !present.contains(k) {
                present.push(k.clone());
            }
        }
    }
    let names: Vec<String> = match fields {
        Some(f) => {
            if let Some(bad) = f.iter().find(|n| !present.contains(n)) {
                return Err(format!(
                    "{}: no field `{bad}` in the metrics; its numeric fields: {}",
                    path.display(),
                    present.join(", ")
                ));
            }
            f.to_vec()
        }
        None if axis == "episode" => present
            .iter()
            .filter(|k| *k == "return" || *k == "eval_return")
            .cloned()
            .collect(),
        None if axis == "controller_step" => present
            .iter()
            .filter(|k| *k == "reward" || *k == "baseline")
            .cloned()
            .collect(),
        None => present
            .iter()
            .filter(|k| DEFAULT_SUFFIXES.iter().any(|s| k.ends_with(s)))
            .cloned()
            .collect(),
    };
    if names.is_empty() {
        return Err(format!(
            "{}: no loss or accuracy in the metrics; name fields with --fields (numeric fields: {})",
            path.display(),
            present.join(", ")
        ));
    }
    let curves: Vec<Curve> = names
        .into_iter()
        .map(|name| {
            let points = lines
                .iter()
                .filter_map(|m| {
                    let e = m.get(axis)?.as_f64()?;
                    let v = m.get(&name)?.as_f64()?;
                    v.is_finite().then_some((e, v))
                })
                .collect();
            Curve { name, points }
        })
        .collect();
    if curves.iter().all(|c| c.points.is_empty()) {
        return Err(format!(
            "{}: the fields to draw have no finite value",
            path.display()
        ));
    }
    Ok((axis, curves))
}

/// Draws the curves of the metrics file `path` into the PNG `out`.
pub fn plot(path: &Path, out: &Path, fields: Option<&[String]>) -> Result<(), String> {
    let (axis, curves) = curves_over(path, fields)?;
    let (acc, rest): (Vec<&Curve>, Vec<&Curve>) = curves.iter().partition(|c| is_score(&c.name));
    let right = if acc.iter().all(|c| !c.name.ends_with("_r2")) {
        "accuracy"
    } else {
        "score"
    };
    let left = if rest.iter().all(|c| c.name.contains("loss")) {
        "loss"
    } else if rest.iter().all(|c| c.name.contains("return")) {
        "return"
    } else if axis == "controller_step"
        && rest
            .iter()
            .all(|c| c.name == "reward" || c.name == "baseline")
    {
        "reward (validation accuracy)"
    } else {
        "metrics"
    };
    let panels: Vec<(&str, Vec<&Curve>)> = [(left, rest), (right, acc)]
        .into_iter()
        .filter(|(_, c)| !c.is_empty())
        .collect();
    let mut canvas = Canvas::new(PANEL.0 * panels.len() as u32, PANEL.1, WHITE);
    let mut color = 0;
    for (i, (title, cs)) in panels.iter().enumerate() {
        let x0 = (i as u32 * PANEL.0) as f32;
        draw_panel(&mut canvas, x0, title, axis, cs, &mut color);
    }
    canvas.save_png(out)
}

/// Tick values for [lo, hi]: multiples of 1, 2 or 5 × 10^k, about `want` of them.
pub fn ticks(lo: f64, hi: f64, want: usize) -> Vec<f64> {
    let span = hi - lo;
    if !(span > 1e-9 * lo.abs().max(hi.abs())) || !span.is_finite() {
        return vec![lo];
    }
    let raw = span / want.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| span / s <= want as f64)
        .unwrap_or(10.0 * mag);
    let first = (lo / step).ceil() as i64;
    let last = (hi / step).floor() as i64;
    (first..=last).map(|k| k as f64 * step).collect()
}

/// A tick label: as few digits as the step needs.
fn label(v: f64, step: f64) -> String {
    let digits = if step >= 1.0 {
        0
    } else {
        (-step.log10().floor()) as usize
    };
    format!("{v:.digits$}")
}

fn draw_panel(
    c: &mut Canvas,
    x0: f32,
    title: &str,
    axis: &str,
    curves: &[&Curve],
    color: &mut usize,
) {
    let (w, h) = (PANEL.0 as f32, PANEL.1 as f32);
    // The plotting area inside the panel.
    let (left, right, top, bottom) = (x0 + 72.0, x0 + w - 20.0, 40.0, h - 52.0);
    let pts = curves.iter().flat_map(|c| c.points.iter());
    let (mut ex0, mut ex1, mut v0, mut v1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in pts {
        ex0 = ex0.min(x);
        ex1 = ex1.max(x);
        v0 = v0.min(y);
        v1 = v1.max(y);
    }
    if ex1 <= ex0 {
        (ex0, ex1) = (ex0 - 1.0, ex0 + 1.0);
    }
    // Room for the first and last points' dots.
    let xpad = 0.03 * (ex1 - ex0);
    let (ex0, ex1) = (ex0 - xpad, ex1 + xpad);
    let pad = if v1 > v0 {
        0.06 * (v1 - v0)
    } else {
        0.5 * v0.abs().max(1e-3)
    };
    let (v0, v1) = (v0 - pad, v1 + pad);
    let sx = |x: f64| left + ((x - ex0) / (ex1 - ex0)) as f32 * (right - left);
    let sy = |y: f64| bottom - ((y - v0) / (v1 - v0)) as f32 * (bottom - top);
    // Grid, ticks and their labels.
    let xt = ticks(ex0.ceil(), ex1.floor(), 10)
        .into_iter()
        .filter(|t| t.fract() == 0.0)
        .collect::<Vec<_>>();
    for &t in &xt {
        let x = sx(t);
        c.line((x, top), (x, bottom), 1.0, GRID);
        c.text(
            &label(t, 1.0),
            (x, bottom + 16.0),
            13.0,
            Anchor::Center,
            BLACK,
        );
    }
    let yt = ticks(v0, v1, 8);
    let ystep = if yt.len() > 1 { yt[1] - yt[0] } else { 1.0 };
    for &t in &yt {
        let y = sy(t);
        c.line((left, y), (right, y), 1.0, GRID);
        c.text(
            &label(t, ystep),
            (left - 6.0, y),
            13.0,
            Anchor::Right,
            BLACK,
        );
    }
    c.frame(
        left as i64,
        top as i64,
        right as i64 + 1,
        bottom as i64 + 1,
        BLACK,
    );
    c.text(
        title,
        ((left + right) / 2.0, 20.0),
        17.0,
        Anchor::Center,
        BLACK,
    );
    c.text(
        axis,
        ((left + right) / 2.0, h - 14.0),
        14.0,
        Anchor::Center,
        BLACK,
    );
    // The curves: lines through the points, a dot on each.
    let mut legend = Vec::new();
    for cv in curves {
        let col = COLORS[*color % COLORS.len()];
        *color += 1;
        let p: Vec<(f32, f32)> = cv.points.iter().map(|&(x, y)| (sx(x), sy(y))).collect();
        // Thousands of episodes: thin lines and no dots.
        let (width, dots) = if p.len() > 200 {
            (1.0, false)
        } else {
            (2.0, true)
        };
        for s in p.windows(2) {
            c.line(s[0], s[1], width, col);
        }
        for &q in p.iter().filter(|_| dots) {
            c.disc(q, 3.0, col);
        }
        legend.push((cv.name.as_str(), col));
    }
    // The legend, in the corner its box hides the fewest points of the curves (sampled
    // along the segments too).
    let lw = legend
        .iter()
        .map(|(n, _)| c.text_width(n, 13.0))
        .fold(0.0, f32::max)
        + 44.0;
    let lh = 20.0 * legend.len() as f32 + 8.0;
    let samples: Vec<(f32, f32)> = curves
        .iter()
        .flat_map(|cv| {
            let p: Vec<(f32, f32)> = cv.points.iter().map(|&(x, y)| (sx(x), sy(y))).collect();
            let segs: Vec<(f32, f32)> = p
                .windows(2)
                .flat_map(|s| {
                    (0..16).map(move |k| {
                        let t = k as f32 / 16.0;
                        (
                            s[0].0 + t * (s[1].0 - s[0].0),
                            s[0].1 + t * (s[1].1 - s[0].1),
                        )
                    })
                })
                .collect();
            segs.into_iter().chain(p)
        })
        .collect();
    let corners = [
        (right - lw - 8.0, top + 8.0),
        (right - lw - 8.0, bottom - lh - 8.0),
        (left + 8.0, top + 8.0),
        (left + 8.0, bottom - lh - 8.0),
    ];
    let hidden = |&(x, y): &(f32, f32)| {
        samples
            .iter()
            .filter(|&&(px, py)| {
                px >= x - 4.0 && px <= x + lw + 4.0 && py >= y - 4.0 && py <= y + lh + 4.0
            })
            .count()
    };
    let (lx, ly) = corners
        .iter()
        .copied()
        .min_by_key(hidden)
        .expect("four corners");
    c.rect(
        lx as i64,
        ly as i64,
        (lx + lw) as i64,
        (ly + lh) as i64,
        WHITE,
    );
    c.frame(
        lx as i64,
        ly as i64,
        (lx + lw) as i64,
        (ly + lh) as i64,
        [160, 160, 160],
    );
    for (k, (name, col)) in legend.iter().enumerate() {
        let y = ly + 14.0 + 20.0 * k as f32;
        c.line((lx + 8.0, y), (lx + 30.0, y), 2.0, *col);
        c.text(name, (lx + 36.0, y), 13.0, Anchor::Left, BLACK);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_numbers_inside_the_range() {
        let near = |a: Vec<f64>, b: &[f64]| {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-12)
        };
        assert!(near(ticks(0.0, 10.0, 5), &[0.0, 2.0, 4.0, 6.0, 8.0, 10.0]));
        assert!(near(ticks(0.13, 0.61, 5), &[0.2, 0.3, 0.4, 0.5, 0.6]));
        assert!(near(ticks(1.0, 1.0, 5), &[1.0]));
    }

    /// A metrics file as training writes it, with an early-stopping line at the end.
    fn metrics_file(dir: &Path) -> std::path::PathBuf {
        let p = dir.join("m.jsonl");
        let mut text = String::new();
        for e in 1..=6 {
            let l = 2.0 / e as f64;
            text += &format!(
                "{{\"epoch\":{e},\"step\":{},\"train_loss\":{l},\"train_acc\":{},\"test_loss\":{},\"test_acc\":{},\"engine\":\"jit\"}}\n",
                10 * e,
                1.0 - l / 3.0,
                l * 1.1,
                1.0 - l / 2.5
            );
        }
        text += "{\"epoch\":6,\"step\":60,\"restored_epoch\":5,\"val_loss\":0.4}\n";
        std::fs::write(&p, text).expect("write");
        p
    }

    fn tmp(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("dlc-plot-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("dir");
        d
    }

    #[test]
    fn searches_plot_rewards_over_controller_steps() {
        let dir = std::env::temp_dir().join(format!("dlc-plot-search-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("search.jsonl");
        let mut text = String::new();
        for k in 1..=4 {
            text += &format!(
                "{{\"controller_step\":{k},\"reward\":0.{k},\"baseline\":0.05,\"architecture\":\"layers=1\"}}\n"
            );
        }
        text += "{\"best_architecture\":\"layers=1\",\"best_test_acc\":0.9}\n";
        std::fs::write(&p, text).unwrap();
        let (axis, cs) = curves_over(&p, None).unwrap();
        assert_eq!(axis, "controller_step");
        let names: Vec<&str> = cs.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["reward", "baseline"]);
        assert_eq!(
            cs[0].points,
            vec![(1.0, 0.1), (2.0, 0.2), (3.0, 0.3), (4.0, 0.4)]
        );
        plot(&p, &dir.join("search.png"), None).unwrap();
    }

    #[test]
    fn runs_on_an_environment_plot_returns_over_episodes() {
        let dir = std::env::temp_dir().join(format!("dlc-plot-rl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("rl.jsonl");
        let mut text = String::new();
        for e in 1..=30 {
            let eval = if e % 10 == 0 {
                format!(",\"eval_return\":{}", e * 2)
            } else {
                String::new()
            };
            text += &format!("{{\"episode\":{e},\"return\":{e}.0,\"loss\":0.5{eval}}}\n");
        }
        text += "{\"episodes\":30,\"eval_return_mean\":60.0}\n";
        std::fs::write(&path, text).unwrap();
        let (axis, cs) = curves_over(&path, None).unwrap();
        assert_eq!(axis, "episode");
        let names: Vec<&str> = cs.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["return", "eval_return"]);
        assert_eq!(cs[0].points.len(), 30);
        assert_eq!(cs[1].points, vec![(10.0, 20.0), (20.0, 40.0), (30.0, 60.0)]);
        let png = dir.join("rl.png");
        plot(&path, &png, None).unwrap();
        assert!(std::fs::metadata(&png).unwrap().len() > 1000);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn default_curves_are_the_losses_and_accuracies_of_each_epoch() {
        let d = tmp("curves");
        let c = curves(&metrics_file(&d), None).expect("curves");
        let names: Vec<&str> = c.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["train_loss", "train_acc", "test_loss", "test_acc"]);
        assert_eq!(
            c[0].points.len(),
            6,
            "the early-stopping line is not an epoch"
        );
        assert_eq!(c[0].points[1], (2.0, 1.0));
    }

    #[test]
    fn the_picture_has_two_panels_and_is_drawn() {
        let d = tmp("png");
        let out = d.join("c.png");
        plot(&metrics_file(&d), &out, None).expect("plot");
        let dec = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&out).unwrap()));
        let mut r = dec.read_info().expect("a PNG");
        let mut buf = vec![0; r.output_buffer_size().expect("size")];
        let info = r.next_frame(&mut buf).expect("pixels");
        assert_eq!((info.width, info.height), (2 * PANEL.0, PANEL.1));
        let px = &buf[..info.buffer_size()];
        let inked = px.chunks(3).filter(|p| p.iter().any(|&v| v < 200)).count();
        assert!(inked > 5000, "only {inked} dark pixels");
        // Each curve colour is on the picture.
        for col in &COLORS[..4] {
            assert!(px.chunks(3).any(|p| p == col), "no pixel of {col:?}");
        }
    }

    #[test]
    fn bad_files_and_fields_are_clear_errors() {
        let d = tmp("errors");
        let empty = d.join("empty.jsonl");
        std::fs::write(&empty, "").unwrap();
        let e = plot(&empty, &d.join("e.png"), None).unwrap_err();
        assert!(e.contains("empty.jsonl") && e.contains("no epoch"), "{e}");
        let m = metrics_file(&d);
        let e = plot(&m, &d.join("f.png"), Some(&["nope".to_string()])).unwrap_err();
        assert!(
            e.contains("no field `nope`") && e.contains("train_loss"),
            "{e}"
        );
        let bad = d.join("bad.jsonl");
        std::fs::write(&bad, "{\"epoch\":1}\n{\"epoch\":").unwrap();
        let e = plot(&bad, &d.join("b.png"), None).unwrap_err();
        assert!(e.contains("bad.jsonl:2"), "{e}");
    }

    #[test]
    fn labels_show_the_digits_the_step_needs() {
        assert_eq!(label(0.25, 0.05), "0.25");
        assert_eq!(label(3.0, 1.0), "3");
        assert_eq!(label(0.5, 0.1), "0.5");
    }
}

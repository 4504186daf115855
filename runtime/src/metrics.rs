//! Metrics JSON lines and progress display.

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Map, Value, json};
use std::fs::File;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

/// Writes one JSON object per line, each with the engine, its kernel count and the
/// data-set arguments in force (`"data_args": {"seq": 100}`, `{}` for a data set
/// without arguments).
pub struct MetricsSink {
    file: Option<(PathBuf, File)>,
    engine: &'static str,
    kernels: usize,
    data_args: Map<String, Value>,
}

impl MetricsSink {
    pub fn open(
        path: Option<&Path>,
        engine: &'static str,
        kernels: usize,
        data_args: Map<String, Value>,
    ) -> Result<MetricsSink, String> {
        let file = match path {
            Some(p) => Some((
                p.to_path_buf(),
                File::create(p)
                    .map_err(|e| format!("{}: cannot create metrics file: {e}", p.display()))?,
            )),
            None => None,
        };
        Ok(MetricsSink {
            file,
            engine,
            kernels,
            data_args,
        })
    }

    pub fn write(&mut self, mut m: Map<String, Value>) -> Result<(), String> {
        m.insert("engine".into(), json!(self.engine));
        m.insert("kernels".into(), json!(self.kernels));
        m.insert("data_args".into(), Value::Object(self.data_args.clone()));
        if let Some((path, f)) = &mut self.file {
            let line = Value::Object(m).to_string();
            writeln!(f, "{line}")
                .and_then(|_| f.flush())
                .map_err(|e| format!("{}: cannot write metrics: {e}", path.display()))?;
        }
        Ok(())
    }
}

/// A progress bar on a terminal; plain lines (one per epoch) otherwise; or nothing.
pub struct Progress {
    bar: Option<ProgressBar>,
    quiet: bool,
    epochs: usize,
    steps_per_epoch: usize,
}

impl Progress {
    pub fn new(epochs: usize, steps_per_epoch: usize, quiet: bool) -> Progress {
        let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
            let b = ProgressBar::new(steps_per_epoch as u64);
            b.set_style(
                ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg}")
                    .expect("valid template")
                    .progress_chars("=> "),
            );
            b
        });
        Progress {
            bar,
            quiet,
            epochs,
            steps_per_epoch,
        }
    }

    pub fn start_epoch(&mut self, epoch: usize) {
        if let Some(b) = &self.bar {
            b.reset();
            b.set_length(self.steps_per_epoch as u64);
            b.set_prefix(format!("epoch {epoch}/{}", self.epochs));
        }
    }

    pub fn step(&mut self, running_loss: f64) {
        if let Some(b) = &self.bar {
            b.inc(1);
            b.set_message(format!("loss {running_loss:.4}"));
        }
    }

    pub fn end_epoch(&mut self, m: &Map<String, Value>) {
        if self.quiet {
            return;
        }
        let mut parts = Vec::new();
        for (k, v) in m {
            let shown = match v {
                Value::Number(n) if n.is_f64() => {
                    let f = n.as_f64().unwrap_or(f64::NAN);
                    if f.fract() == 0.0 {
                        format!("{f:.0}")
                    } else {
                        format!("{f:.4}")
                    }
                }
                other => other.to_string(),
            };
            parts.push(format!("{k} {shown}"));
        }
        let line = parts.join("  ");
        match &self.bar {
            Some(b) => b.println(line),
            None => say!("{line}"),
        }
    }

    pub fn finish(&mut self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

//! From a `.dl` file and flags to everything a command needs: the parsed program, the
//! data set, the training configuration with the flags applied, and the graphs.

use crate::datasig;
use crate::engine::{Engine, EngineKind};
use dlc_compiler::lower::{DataSig, Lowered, Mode, Optimizer, Program, TrainConfig};
use dlc_compiler::train::{TrainingGraph, training_graph};
use dlc_data::Dataset;
use dlc_dsl::Diagnostic;
use std::path::{Path, PathBuf};

/// Imports nest at most this deep.
pub const MAX_IMPORT_DEPTH: usize = 16;

/// Read and parse a `.dl` file and the files it imports (`import "other.dl"`, relative to
/// the importing file); errors come rendered with file, line, column and caret.
pub fn load_program(path: &Path) -> Result<Program, String> {
    let mut stack = Vec::new();
    load_imports(path, &mut stack)
}

fn load_imports(path: &Path, stack: &mut Vec<PathBuf>) -> Result<Program, String> {
    let mut prog = load_one(path)?;
    for (rel, span) in prog.imports() {
        let at = |msg: String| render(&prog.source, &[Diagnostic::new(span, msg)]);
        let target = path.parent().unwrap_or(Path::new(".")).join(&rel);
        let canon = std::fs::canonicalize(&target).map_err(|e| {
            at(format!(
                "cannot import \"{rel}\": {}: {e}",
                target.display()
            ))
        })?;
        let here = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        if canon == here || stack.contains(&canon) {
            return Err(at(format!("\"{rel}\" imports itself (an import cycle)")));
        }
        if stack.len() >= MAX_IMPORT_DEPTH {
            return Err(at(format!(
                "imports nest deeper than {MAX_IMPORT_DEPTH} files"
            )));
        }
        stack.push(here);
        let other = load_imports(&target, stack);
        stack.pop();
        prog.add_import(&other?);
    }
    Ok(prog)
}

fn load_one(path: &Path) -> Result<Program, String> {
    let name = path.display().to_string();
    let meta = std::fs::metadata(path).map_err(|e| format!("{name}: cannot read: {e}"))?;
    if meta.is_dir() {
        return Err(format!("{name}: is a directory, not a .dl file"));
    }
    if meta.len() > dlc_dsl::MAX_FILE_BYTES as u64 {
        return Err(format!(
            "{name}:1:1: error: file is {} bytes; .dl files are limited to {} bytes (1 MiB)",
            meta.len(),
            dlc_dsl::MAX_FILE_BYTES
        ));
    }
    let bytes = std::fs::read(path).map_err(|e| format!("{name}: cannot read: {e}"))?;
    Program::parse(&name, &bytes).map_err(|(src, diags)| render(&src, &diags))
}

pub fn render(src: &dlc_dsl::Source, diags: &[Diagnostic]) -> String {
    let mut out: Vec<String> = diags.iter().map(|d| src.render(d)).collect();
    let n = diags.len();
    out.push(format!(
        "{n} error{} in {}",
        if n == 1 { "" } else { "s" },
        src.name
    ));
    out.join("\n")
}

/// `--data NAME=PATH` (or `--data NAME` for the embedded digits).
pub fn parse_data_flag(s: &str) -> Result<(String, Option<PathBuf>), String> {
    let (name, path) = match s.split_once('=') {
        Some((n, p)) => (n, Some(PathBuf::from(p))),
        None => (s, None),
    };
    let name = datasig::canonical(name);
    if !dlc_data::DATASET_NAMES.contains(&name.as_str()) {
        return Err(format!(
            "--data {s}: unknown data set `{name}`; known: {}",
            dlc_data::DATASET_NAMES.join(", ")
        ));
    }
    if path.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
        return Err(format!("--data {s}: empty path"));
    }
    Ok((name, path))
}

/// Flags that change the training configuration.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub data: Vec<(String, Option<PathBuf>)>,
    pub epochs: Option<usize>,
    pub batch: Option<usize>,
    pub optimizer: Option<String>,
    pub lr: Option<f64>,
    /// Skip the e-graph optimizer (`--no-opt`).
    pub no_opt: bool,
    /// Threads for the JIT engine's kernels (0: all cores).
    pub threads: usize,
}

/// Which data set a command uses: the one named on `--data`, else the file's.
pub fn choose_data(prog: &Program, ov: &Overrides) -> Result<(String, Option<PathBuf>), String> {
    if let Some((n, p)) = ov.data.first() {
        if ov.data.len() > 1 {
            return Err("--data given more than once: this model trains on one data set".into());
        }
        return Ok((n.clone(), p.clone()));
    }
    match prog.train_def() {
        Some(t) => Ok((datasig::canonical(&t.data.name), None)),
        None => Err(format!(
            "{}: no training section, so no data set: add `train … on DATA {{ … }}` or pass --data",
            prog.source.name
        )),
    }
}

pub fn signature(prog: &Program, name: &str) -> Result<DataSig, String> {
    datasig::by_name(name).ok_or_else(|| {
        let span = prog.train_def().map(|t| t.data.span).unwrap_or_default();
        let d = Diagnostic::new(
            span,
            format!(
                "unknown data set `{name}`; known: {}",
                dlc_data::DATASET_NAMES.join(", ")
            ),
        );
        render(&prog.source, &[d])
    })
}

/// Apply the flags to the file's training configuration (DESIGN §3: `--optimizer` without
/// `--lr` takes that optimizer's default learning rate).
pub fn apply(mut cfg: TrainConfig, ov: &Overrides, data_name: &str) -> Result<TrainConfig, String> {
    if let Some((k, _)) = cfg.data_args.first() {
        return Err(format!(
            "data set `{}` takes no arguments (got `{k}`)",
            cfg.data
        ));
    }
    cfg.data = data_name.to_string();
    if let Some(e) = ov.epochs {
        cfg.epochs = e;
    }
    if let Some(b) = ov.batch {
        cfg.batch = b;
    }
    match (&ov.optimizer, ov.lr) {
        (Some(name), lr) => {
            cfg.optimizer = Optimizer::with_defaults(name, lr).ok_or_else(|| {
                format!(
                    "--optimizer {name}: unknown; expected one of {}",
                    Optimizer::NAMES.join(", ")
                )
            })?;
        }
        (None, Some(lr)) => cfg.optimizer = cfg.optimizer.clone().set_lr(lr),
        (None, None) => {}
    }
    Ok(cfg)
}

/// Everything `train` and `eval` need.
pub struct Setup {
    pub program: Program,
    pub cfg: TrainConfig,
    pub sig: DataSig,
    pub train: TrainingGraph,
    pub eval: Lowered,
    pub train_engine: Engine,
    pub eval_engine: Engine,
}

pub fn compile(
    path: &Path,
    ov: &Overrides,
    engine: EngineKind,
) -> Result<(Setup, Option<PathBuf>), String> {
    let program = load_program(path)?;
    let (data_name, data_path) = choose_data(&program, ov)?;
    let sig = signature(&program, &data_name)?;
    let render_err = |d: Vec<Diagnostic>| render(&program.source, &d);
    let (lowered, cfg) = program
        .lower_training(&sig, Mode::Train)
        .map_err(render_err)?;
    let (eval, _) = program
        .lower_training(&sig, Mode::Eval)
        .map_err(render_err)?;
    let cfg = apply(cfg, ov, &data_name)?;
    let train = training_graph(&lowered, &cfg.optimizer, cfg.clip_norm)
        .map_err(|e| format!("{}: {e}", program.source.name))?;
    let (train_graph, eval_graph) = if ov.no_opt {
        (train.graph.clone(), eval.graph.clone())
    } else {
        (
            dlc_compiler::opt::optimize(&train.graph).graph,
            dlc_compiler::opt::optimize(&eval.graph).graph,
        )
    };
    let threads = if ov.threads == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        ov.threads
    };
    let train_engine = Engine::new(engine, train_graph, threads)?;
    let eval_engine = Engine::new(engine, eval_graph, threads)?;
    Ok((
        Setup {
            program,
            cfg,
            sig,
            train,
            eval,
            train_engine,
            eval_engine,
        },
        data_path,
    ))
}

/// Load the data set of a setup (with a checkpoint's scaling when given).
pub fn load_data(
    cfg: &TrainConfig,
    path: Option<&Path>,
    scaling: Option<&dlc_data::Scaling>,
) -> Result<Dataset, String> {
    dlc_data::load_with_scaling(&cfg.data, path, cfg.validation, scaling).map_err(|e| e.to_string())
}

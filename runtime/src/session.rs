//! From a `.dl` file and flags to everything a command needs: the parsed program, the
//! data set, the training configuration with the flags applied, and the graphs.

use crate::datasig;
use crate::engine::{Engine, EngineKind};
use dlc_compiler::lower::{DataSig, Lowered, Mode, Optimizer, Program, TrainConfig};
use dlc_compiler::train::{TrainingGraph, step_graphs};
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

/// `--data NAME=PATH` (or `--data NAME` for the embedded digits), and `--ood`: clap names
/// the flag in front of the message.
pub fn parse_data_flag(s: &str) -> Result<(String, Option<PathBuf>), String> {
    let (name, path) = match s.split_once('=') {
        Some((n, p)) => (n, Some(PathBuf::from(p))),
        None => (s, None),
    };
    let name = datasig::canonical(name);
    if !dlc_data::DATASET_NAMES.contains(&name.as_str()) {
        return Err(format!(
            "unknown data set `{name}`; known: {}",
            dlc_data::DATASET_NAMES.join(", ")
        ));
    }
    if path.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
        return Err(format!("{s}: empty path"));
    }
    Ok((name, path))
}

/// `--set NAME=VALUE` and `--data-arg NAME=VALUE`: a name (letters, digits, `_`) and a
/// non-empty value.
pub fn parse_assignment(s: &str) -> Result<(String, String), String> {
    let Some((name, value)) = s.split_once('=') else {
        return Err(format!("`{s}`: expected NAME=VALUE"));
    };
    let name = name.trim();
    let ident = name.starts_with(|c: char| c.is_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_alphanumeric() || c == '_');
    if !ident {
        return Err(format!("`{s}`: `{name}` is not a name"));
    }
    if value.trim().is_empty() {
        return Err(format!("`{s}`: empty value"));
    }
    Ok((name.to_string(), value.trim().to_string()))
}

/// `list` with `later` applied over it: an entry of `later` replaces the one of `list`
/// with the same name, new names are added at the end.
pub fn merge(list: &[(String, String)], later: &[(String, String)]) -> Vec<(String, String)> {
    let mut out = list.to_vec();
    for (k, v) in later {
        match out.iter_mut().find(|(n, _)| n == k) {
            Some(slot) => slot.1 = v.clone(),
            None => out.push((k.clone(), v.clone())),
        }
    }
    out
}

/// A name given twice among the `flag` values is an error (the values would contradict).
pub fn no_repeats(flag: &str, list: &[(String, String)]) -> Result<(), String> {
    for (i, (k, _)) in list.iter().enumerate() {
        if list[..i].iter().any(|(n, _)| n == k) {
            return Err(format!("--{flag} {k}=… given more than once"));
        }
    }
    Ok(())
}

/// What a checkpoint records of the command line it was trained with, applied again when
/// it is loaded (`--load`, `--resume`); flags given again win.
#[derive(Clone, Debug, Default)]
pub struct Recorded {
    /// The data set it was trained on.
    pub data: String,
    /// Its `--set` values.
    pub sets: Vec<(String, String)>,
    /// Its `--data-arg` values (applied only when the same data set is used).
    pub data_args: Vec<(String, String)>,
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
    /// `--set NAME=VALUE`: parameters of the main model.
    pub sets: Vec<(String, String)>,
    /// `--data-arg NAME=VALUE`: data-set arguments.
    pub data_args: Vec<(String, String)>,
    /// What a loaded checkpoint recorded (the flags above win over it).
    pub recorded: Option<Recorded>,
}

impl Overrides {
    /// The `--set` values in force: the checkpoint's, then the flags.
    pub fn sets_in_force(&self) -> Vec<(String, String)> {
        let recorded = self.recorded.as_ref().map_or(&[][..], |r| &r.sets[..]);
        merge(recorded, &self.sets)
    }
}

/// Parse a `.dl` file (with its imports) and apply the `--set` values in force.
pub fn open_program(path: &Path, ov: &Overrides) -> Result<Program, String> {
    let mut prog = load_program(path)?;
    no_repeats("set", &ov.sets)?;
    prog.set_params(&ov.sets_in_force())?;
    Ok(prog)
}

/// The data set a command uses and its arguments.
#[derive(Clone, Debug, PartialEq)]
pub struct DataChoice {
    /// Canonical name.
    pub name: String,
    /// `--data NAME=PATH`'s path (None: the embedded copy, or none given).
    pub path: Option<PathBuf>,
    /// Every argument in force (the data set's defaults, then the file's `on NAME(…)`
    /// when the file's data set is the one used, then the checkpoint's, then the flags).
    pub args: Vec<(String, String)>,
    /// The `--data-arg` values in force (the checkpoint's, then the flags): what a
    /// checkpoint records.
    pub arg_flags: Vec<(String, String)>,
}

/// Which data set a command uses: the one named on `--data`, else the file's; with the
/// data-set arguments in force.
pub fn choose_data(prog: &Program, ov: &Overrides) -> Result<DataChoice, String> {
    let file_data = prog.train_def().map(|t| datasig::canonical(&t.data.name));
    // A search's data set is its children's (they read --data).
    if file_data.as_deref() == Some(dlc_compiler::lower::SEARCH_SOURCE) {
        return Ok(DataChoice {
            name: dlc_compiler::lower::SEARCH_SOURCE.to_string(),
            path: None,
            args: Vec::new(),
            arg_flags: Vec::new(),
        });
    }
    if let (Some(env), Some((n, _))) = (&file_data, ov.data.first())
        && crate::envs::NAMES.contains(&env.as_str())
    {
        return Err(format!(
            "{}: trains on the environment {env}, which gives its own experience; --data {n} names a data set",
            prog.source.name
        ));
    }
    let (name, path) = if let Some((n, p)) = ov.data.first() {
        if ov.data.len() > 1 {
            return Err("--data given more than once: this model trains on one data set".into());
        }
        (n.clone(), p.clone())
    } else {
        match &file_data {
            Some(n) => (n.clone(), None),
            None => {
                return Err(format!(
                    "{}: no training section, so no data set: add `train … on DATA {{ … }}` or pass --data",
                    prog.source.name
                ));
            }
        }
    };
    // The file's arguments belong to the file's data set.
    let written = if file_data.as_deref() == Some(name.as_str()) {
        prog.data_args().map_err(|d| render(&prog.source, &d))?
    } else {
        Vec::new()
    };
    no_repeats("data-arg", &ov.data_args)?;
    let recorded = match &ov.recorded {
        Some(r) if r.data == name => r.data_args.clone(),
        _ => Vec::new(),
    };
    let arg_flags = merge(&recorded, &ov.data_args);
    let mut given = written;
    given.extend(arg_flags.iter().cloned());
    let args = dlc_data::resolve_args(&name, &given).map_err(|e| {
        let span = prog.train_def().map(|t| t.data.span).unwrap_or_default();
        if file_data.as_deref() == Some(name.as_str()) && ov.data_args.is_empty() {
            render(&prog.source, &[Diagnostic::new(span, e.to_string())])
        } else {
            e.to_string()
        }
    })?;
    Ok(DataChoice {
        name,
        path,
        args,
        arg_flags,
    })
}

/// The signature of the chosen data set. `songs` gives its vocabulary's size: `vocab`
/// (from a checkpoint) when given, else read from the file, else none (the model's
/// default applies).
pub fn signature(
    prog: &Program,
    data: &DataChoice,
    vocab: Option<&[char]>,
) -> Result<DataSig, String> {
    if data.name == "songs" {
        let seq: usize = data
            .args
            .iter()
            .find(|(k, _)| k == "seq")
            .and_then(|(_, v)| v.parse().ok())
            .ok_or("data set `songs`: no seq")?;
        // Without a file (checking or compiling a model), the vocabulary size is the
        // model's own default (or --set vocab=N).
        let size = match (vocab, &data.path) {
            (Some(v), _) => Some(v.len()),
            (None, Some(p)) => Some(
                dlc_data::songs_vocabulary(p)
                    .map_err(|e| e.to_string())?
                    .len(),
            ),
            (None, None) => None,
        };
        return Ok(datasig::text("songs", size, seq));
    }
    if data.name == dlc_compiler::lower::SEARCH_SOURCE {
        let train = prog.train_def().ok_or("no training section")?;
        let (steps, options) = dlc_compiler::lower::search_space(train).ok_or_else(|| {
            render(
                &prog.source,
                &[Diagnostic::new(
                    train.span,
                    "training on architectures needs choices(name: [options], …): the decisions the controller takes",
                )],
            )
        })?;
        return Ok(datasig::architectures(steps, options));
    }
    if data.name == "point_mnist" {
        let points = dlc_data::point_count(&data.args).map_err(|e| e.to_string())?;
        return Ok(datasig::point_sets(points));
    }
    datasig::by_name(&data.name).ok_or_else(|| {
        let span = prog.train_def().map(|t| t.data.span).unwrap_or_default();
        let d = Diagnostic::new(
            span,
            format!(
                "unknown data set `{}`; known: {}",
                data.name,
                dlc_data::DATASET_NAMES.join(", ")
            ),
        );
        render(&prog.source, &[d])
    })
}

/// A lowering error, with a note on the `--set` values in force (they may be the cause).
pub fn render_lowering(prog: &Program, ov: &Overrides, diags: &[Diagnostic]) -> String {
    let mut text = render(&prog.source, diags);
    let on_songs = prog.train_def().is_some_and(|t| t.data.name == "songs");
    if on_songs && !ov.data.iter().any(|(n, p)| n == "songs" && p.is_some()) {
        text.push_str(
            "\nnote: the songs data set's vocabulary comes from its file: pass --data songs=PATH (a UTF-8 text file of tunes separated by blank lines)",
        );
    }
    let sets = ov.sets_in_force();
    if sets.is_empty() {
        return text;
    }
    let shown: Vec<String> = sets.iter().map(|(k, v)| format!("--set {k}={v}")).collect();
    format!(
        "{text}\nnote: the model's parameters were set with {}",
        shown.join(" ")
    )
}

/// Apply the flags to the file's training configuration (DESIGN §3: `--optimizer` without
/// `--lr` takes that optimizer's default learning rate).
pub fn apply(
    mut cfg: TrainConfig,
    ov: &Overrides,
    data: &DataChoice,
) -> Result<TrainConfig, String> {
    cfg.data = data.name.clone();
    cfg.data_args = data.args.clone();
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
    /// The training step of each objective, in the order a step runs them on a batch.
    pub steps: Vec<ObjectiveStep>,
    /// Every parameter of the model.
    pub params: Vec<dlc_compiler::lower::ParamInfo>,
    /// Every optimizer state tensor (each objective's, for its parameters).
    pub states: Vec<dlc_compiler::train::StateInfo>,
    pub eval: Lowered,
    /// The training-mode graph as lowered (every objective's forward pass, unoptimized,
    /// with the place in the file of each node): `--check-numerics` runs it again to find
    /// the first value that is not finite.
    pub forward: dlc_compiler::ir::Graph,
    pub eval_engine: Engine,
    /// On an environment: the policy alone (`pred`, and a Gaussian's `log_std`), the
    /// graph that acts.
    pub act_engine: Option<Engine>,
    /// With `mc_dropout(passes: T)`: the prediction (`pred`) in training mode, every
    /// random op drawing (dropout on), for Monte Carlo evaluation.
    pub stochastic_engine: Option<Engine>,
    /// The `--set` values in force (a checkpoint records them).
    pub sets: Vec<(String, String)>,
    /// The `--data-arg` values in force (a checkpoint records them).
    pub data_arg_flags: Vec<(String, String)>,
}

impl Setup {
    /// The name of the model the section trains (empty when there is none).
    pub fn model_name(&self) -> String {
        self.program
            .main_model()
            .map(|m| m.name.name.clone())
            .unwrap_or_default()
    }

    /// Kernels of one training step (all its objectives).
    pub fn kernels(&self) -> usize {
        self.steps.iter().map(|s| s.engine.kernels).sum()
    }

    /// (native, planned) kernels of a training step on the JIT; None on the reference
    /// engine.
    pub fn native_kernels(&self) -> Option<(usize, usize)> {
        self.steps
            .iter()
            .map(|s| s.engine.native_kernels())
            .try_fold((0, 0), |(a, b), k| k.map(|(n, t)| (a + n, b + t)))
    }
}

/// One objective's training step, compiled.
pub struct ObjectiveStep {
    /// The objective's name (`loss` for a section with `loss = …`).
    pub name: String,
    pub train: TrainingGraph,
    pub engine: Engine,
}

pub fn compile(
    path: &Path,
    ov: &Overrides,
    engine: EngineKind,
) -> Result<(Setup, Option<PathBuf>), String> {
    compile_program(open_program(path, ov)?, ov, engine)
}

/// [`compile`] of a program already parsed (an architecture search's child).
pub fn compile_program(
    program: Program,
    ov: &Overrides,
    engine: EngineKind,
) -> Result<(Setup, Option<PathBuf>), String> {
    let data = choose_data(&program, ov)?;
    let sig = signature(&program, &data, None)?;
    let render_err = |d: Vec<Diagnostic>| render_lowering(&program, ov, &d);
    let (lowered, cfg) = program
        .lower_training(&sig, Mode::Train)
        .map_err(render_err)?;
    let (eval, _) = program
        .lower_training(&sig, Mode::Eval)
        .map_err(render_err)?;
    let cfg = apply(cfg, ov, &data)?;
    let graphs =
        step_graphs(&lowered, &cfg).map_err(|e| format!("{}: {e}", program.source.name))?;
    let optimized = |g: &dlc_compiler::ir::Graph| {
        if ov.no_opt {
            g.clone()
        } else {
            dlc_compiler::opt::optimize(g).graph
        }
    };
    let threads = threads(ov.threads);
    let mut steps = Vec::new();
    let mut states = Vec::new();
    for (o, train) in graphs {
        states.extend(train.states.iter().cloned());
        steps.push(ObjectiveStep {
            name: o.name,
            engine: Engine::new(engine, optimized(&train.graph), threads)?,
            train,
        });
    }
    let eval_engine = Engine::new(engine, optimized(&eval.graph), threads)?;
    let act_engine = match (&cfg.agent, &cfg.search) {
        (Some(_), _) | (_, Some(_)) => {
            let mut g = eval.graph.clone();
            g.outputs
                .retain(|(n, _)| matches!(n.as_str(), "pred" | "log_std" | "value"));
            // Acting runs at batch 1 on one thread: splitting a tiny product costs more
            // than it saves.
            Some(Engine::new(engine, optimized(&g.compact()), 1)?)
        }
        _ => None,
    };
    let stochastic_engine = match cfg.mc_dropout {
        Some(_) => {
            let mut g = lowered.graph.clone();
            g.outputs.retain(|(n, _)| n == "pred");
            Some(Engine::new(engine, optimized(&g.compact()), threads)?)
        }
        None => None,
    };
    Ok((
        Setup {
            program,
            params: lowered.params.clone(),
            states,
            cfg,
            sig,
            steps,
            eval,
            forward: lowered.graph.clone(),
            eval_engine,
            act_engine,
            stochastic_engine,
            sets: ov.sets_in_force(),
            data_arg_flags: data.arg_flags,
        },
        data.path,
    ))
}

/// Worker threads of `--threads N`: 0 (the flag not given) means every core.
pub fn threads(n: usize) -> usize {
    if n == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        n
    }
}

/// Load the data set of a setup with its arguments (and a checkpoint's scaling when
/// given).
pub fn load_data(
    cfg: &TrainConfig,
    path: Option<&Path>,
    scaling: Option<&dlc_data::Scaling>,
) -> Result<Dataset, String> {
    dlc_data::load_with_args(&cfg.data, path, cfg.validation, scaling, &cfg.data_args)
        .map_err(|e| e.to_string())
}

/// The data-set arguments as a JSON object for metrics lines and checkpoints: whole
/// numbers and other numbers as JSON numbers, `true`/`false` as booleans, the rest as
/// strings.
pub fn args_json(args: &[(String, String)]) -> serde_json::Map<String, serde_json::Value> {
    use serde_json::{Value, json};
    args.iter()
        .map(|(k, v)| {
            let value = if let Ok(i) = v.parse::<i64>() {
                json!(i)
            } else if let Some(f) = v.parse::<f64>().ok().filter(|f| f.is_finite()) {
                json!(f)
            } else if let Ok(b) = v.parse::<bool>() {
                json!(b)
            } else {
                Value::String(v.clone())
            };
            (k.clone(), value)
        })
        .collect()
}

//! The `dlc` command line.

use crate::checkpoint::Checkpoint;
use crate::engine::{Engine, EngineKind};
use crate::metrics::MetricsSink;
use crate::session::{self, Overrides};
use crate::trainer::{self, RunLimits, TrainState};
use clap::{Parser, Subcommand, ValueEnum};
use dlc_compiler::interp::Env;
use dlc_compiler::lower::Mode;
use dlc_compiler::print::print_graph;
use ndarray::{ArrayD, IxDyn};
use serde_json::{Map, Value, json};
use std::path::{Path, PathBuf};

#[derive(Parser)]
#[command(
    name = "dlc",
    version,
    about = "A deep-learning compiler and trainer: models written in .dl files, trained on real data"
)]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Emit {
    /// The syntax tree.
    Ast,
    /// The forward IR graph of the training section (or of `forward`).
    Ir,
    /// The unsimplified gradient graph (forward + `grad:PARAM` outputs).
    Grad,
    /// The optimized training graph: fused kernels and their bodies.
    Opt,
    /// How the JIT runs each kernel (native loop, gemm + epilogue, interpreted).
    Plan,
    /// Cranelift IR of every compiled kernel.
    Clif,
}

/// `--set` and `--data-arg`, taken by every command that reads a model file.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct ModelArgs {
    /// Give a parameter of the main model a value, replacing its default or the size the
    /// data set provides: NAME=VALUE, where VALUE is a number, true/false, a quoted string
    /// or a name of the language such as tanh (another word is a string). Repeatable;
    /// recorded in checkpoints.
    #[arg(long = "set", value_name = "NAME=VALUE", value_parser = session::parse_assignment)]
    pub set: Vec<(String, String)>,
    /// Set a data-set argument, as if written in the file's `on DATA(NAME: VALUE)` (e.g.
    /// seq=200 for songs). Repeatable; recorded in checkpoints.
    #[arg(long = "data-arg", value_name = "NAME=VALUE", value_parser = session::parse_assignment)]
    pub data_arg: Vec<(String, String)>,
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Parse, resolve and shape-check a .dl file.
    Check {
        file: PathBuf,
        /// Check against this data set instead of the file's (NAME or NAME=PATH).
        #[arg(long, value_parser = session::parse_data_flag)]
        data: Vec<(String, Option<PathBuf>)>,
        #[command(flatten)]
        model: ModelArgs,
    },
    /// Print a compiler stage.
    Compile {
        file: PathBuf,
        #[arg(long, value_enum, default_value = "ir")]
        emit: Emit,
        #[arg(long, value_parser = session::parse_data_flag)]
        data: Vec<(String, Option<PathBuf>)>,
        /// Batch size B for --emit plan|clif (default 64; other stages print the symbolic B).
        #[arg(long)]
        batch: Option<usize>,
        /// Print `key: value` statistics of the compilation.
        #[arg(long)]
        stats: bool,
        /// Skip the optimizer (show and count the unoptimized graph).
        #[arg(long)]
        no_opt: bool,
        #[command(flatten)]
        model: ModelArgs,
    },
    /// Evaluate the model's forward function on inputs given as JSON.
    Run {
        file: PathBuf,
        /// A checkpoint with the weights (default: the initial weights).
        #[arg(long)]
        load: Option<PathBuf>,
        /// NAME=JSON (e.g. x=[[-1,2]]), or NAME=@FILE: a .json file, or a .safetensors file
        /// (its tensor NAME, or its only tensor).
        #[arg(long = "input", required = true)]
        inputs: Vec<String>,
        #[arg(long, value_parser = session::parse_data_flag)]
        data: Vec<(String, Option<PathBuf>)>,
        #[arg(long, default_value = "jit")]
        engine: String,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// When the prediction is not finite, name the op that first gave a NaN or an
        /// infinity, with its FILE:LINE:COL.
        #[arg(long)]
        check_numerics: bool,
        #[command(flatten)]
        model: ModelArgs,
    },
    /// Train a model.
    Train(TrainArgs),
    /// Generate text from a checkpoint of a character model (one step at a time, the
    /// recurrent state kept between steps), or with --out, pictures of what an image model
    /// makes (an autoencoder: test images over their reconstructions).
    Sample {
        file: PathBuf,
        #[arg(long)]
        load: PathBuf,
        /// Write images instead of printing text: a .png grid, or a .safetensors file
        /// with the tensor `samples` [N, H, W] in [0, 1].
        #[arg(long)]
        out: Option<PathBuf>,
        /// Images to draw (with --out).
        #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=1024))]
        count: u64,
        /// The data set whose test images an autoencoder reconstructs (NAME=PATH).
        #[arg(long, value_parser = session::parse_data_flag)]
        data: Vec<(String, Option<PathBuf>)>,
        /// With --out: move latent dimension K of the model's `decode` over [-3, 3] (11
        /// steps, 5 codes from the prior for the other dimensions).
        #[arg(long)]
        traverse: Option<u64>,
        /// Characters to generate after the prime.
        #[arg(long, default_value_t = 1000)]
        length: usize,
        /// Divides the logits before sampling: below 1 more conservative, above 1 wilder.
        #[arg(long, default_value_t = 1.0)]
        temperature: f64,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Text the model reads first (printed as the start of the sample).
        #[arg(long, default_value = "X:")]
        prime: String,
        #[arg(long, default_value = "jit")]
        engine: String,
        #[command(flatten)]
        model: ModelArgs,
    },
    /// Draw a metrics file's per-epoch curves (losses, accuracies) as a PNG.
    Plot {
        /// A metrics file written by `dlc train --metrics`.
        metrics: PathBuf,
        /// The PNG to write.
        #[arg(long)]
        out: PathBuf,
        /// Fields to draw, comma-separated (default: every loss and accuracy).
        #[arg(long, value_delimiter = ',')]
        fields: Option<Vec<String>>,
    },
    /// Time whole training steps (forward, backward, update) on batches in memory.
    Bench {
        file: PathBuf,
        #[arg(long, value_parser = session::parse_data_flag)]
        data: Vec<(String, Option<PathBuf>)>,
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        batch: Option<u64>,
        /// Steps per timed repeat.
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..))]
        steps: u64,
        /// Timed repeats; the median is reported.
        #[arg(long, default_value_t = 7, value_parser = clap::value_parser!(u64).range(1..))]
        repeats: u64,
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        threads: Option<u64>,
        #[arg(long, default_value = "jit")]
        engine: String,
        #[arg(long)]
        no_opt: bool,
        /// Time the data-parallel step over MPI (`mpirun -np N dlc bench … --distributed`):
        /// the global batch split across ranks; reports the global examples per second.
        #[arg(long)]
        distributed: bool,
        /// With --distributed: the least size of a bucket of gradients all-reduced together.
        #[arg(long, default_value_t = DEFAULT_BUCKET_MB, value_parser = parse_bucket_mb)]
        bucket_mb: f64,
        #[command(flatten)]
        model: ModelArgs,
    },
    /// Replay actions in an environment (cartpole, pendulum) from a given internal state;
    /// print the trajectory as CSV (the columns of the reference recordings).
    Env {
        /// cartpole or pendulum.
        name: String,
        /// The internal state, comma-separated: cartpole x,x_dot,theta,theta_dot; pendulum
        /// theta,theta_dot.
        #[arg(long, allow_hyphen_values = true)]
        state: String,
        /// Actions, comma-separated: cartpole 0 or 1; pendulum a torque (float32).
        #[arg(long, allow_hyphen_values = true, default_value = "")]
        actions: String,
    },
    /// Evaluate a checkpoint on the test split.
    Eval {
        file: PathBuf,
        #[arg(long)]
        load: PathBuf,
        #[arg(long, value_parser = session::parse_data_flag)]
        data: Vec<(String, Option<PathBuf>)>,
        /// Out-of-distribution data set NAME=PATH (e.g. fashion_mnist=DIR for a model of
        /// MNIST): adds the uncertainty on its test set and ood_auroc.
        #[arg(long, value_parser = session::parse_data_flag)]
        ood: Option<(String, Option<PathBuf>)>,
        #[arg(long)]
        metrics: Option<PathBuf>,
        #[arg(long, default_value = "jit")]
        engine: String,
        #[command(flatten)]
        model: ModelArgs,
    },
}

#[derive(clap::Args)]
pub struct TrainArgs {
    file: PathBuf,
    /// Data set NAME=PATH (mnist, fashion_mnist, breast_cancer, diabetes, songs, cora,
    /// point_mnist) or NAME (digits).
    #[arg(long, value_parser = session::parse_data_flag)]
    data: Vec<(String, Option<PathBuf>)>,
    /// Total epochs (a resumed run continues up to this count).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    epochs: Option<u64>,
    /// Stop after this many training steps in total (on an environment: environment
    /// steps, at the end of the episode that reaches them).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    steps: Option<u64>,
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    batch: Option<u64>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, value_parser = ["sgd", "momentum", "adam", "adagrad", "adadelta", "rmsprop"])]
    optimizer: Option<String>,
    #[arg(long, value_parser = positive_f64)]
    lr: Option<f64>,
    /// Threads for the JIT engine's matmuls (default: all cores; the reference engine runs on one).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    threads: Option<u64>,
    /// Checkpoint file, written at the end of every epoch and when training ends (after
    /// early stopping: with the best weights).
    #[arg(long)]
    save: Option<PathBuf>,
    /// Continue from a checkpoint (`--epochs` counts total epochs).
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Data-parallel training over MPI: run as `mpirun -np N dlc train FILE --distributed`
    /// (dlc built with `--features mpi`); the file's batch is the global batch.
    #[arg(long)]
    distributed: bool,
    /// With --distributed: the least size of a bucket of gradients all-reduced together
    /// (each bucket starts its all-reduce as soon as the backward pass has computed it).
    #[arg(long, default_value_t = DEFAULT_BUCKET_MB, value_parser = parse_bucket_mb)]
    bucket_mb: f64,
    #[arg(long)]
    metrics: Option<PathBuf>,
    #[arg(long, default_value = "jit")]
    engine: String,
    /// Skip the e-graph optimizer: run the unfused graph op by op.
    #[arg(long)]
    no_opt: bool,
    /// Stop at the first step whose loss, gradients or parameters are not finite, naming
    /// the op (FILE:LINE:COL) that first gave a NaN or an infinity.
    #[arg(long)]
    check_numerics: bool,
    #[command(flatten)]
    model: ModelArgs,
}

fn positive_f64(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() => Ok(v),
        _ => Err(format!("`{s}` is not a positive number")),
    }
}

/// How a command that did not fail ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Exit {
    Done,
    /// Ctrl-C stopped training (exit status 130, as a shell reports SIGINT).
    Interrupted,
}

pub fn run(cli: Cli) -> Result<Exit, String> {
    run_command(cli)?;
    Ok(if crate::interrupt::requested() {
        Exit::Interrupted
    } else {
        Exit::Done
    })
}

fn run_command(cli: Cli) -> Result<(), String> {
    match cli.cmd {
        Cmd::Check { file, data, model } => check(&file, overrides(data, model)),
        Cmd::Compile {
            file,
            emit,
            data,
            batch,
            stats,
            no_opt,
            model,
        } => compile(&file, emit, overrides(data, model), batch, stats, no_opt),
        Cmd::Run {
            file,
            load,
            inputs,
            data,
            engine,
            seed,
            check_numerics,
            model,
        } => run_forward(
            &file,
            (load.as_deref(), check_numerics),
            &inputs,
            overrides(data, model),
            &engine,
            seed,
        ),
        Cmd::Train(a) => train(a),
        Cmd::Env {
            name,
            state,
            actions,
        } => {
            let state = crate::envs::parse_numbers("state", &state)?;
            let actions = crate::envs::parse_numbers("actions", &actions)?;
            let csv = crate::envs::replay(&name, &state, &actions)?;
            say_raw!("{csv}");
            Ok(())
        }
        Cmd::Plot {
            metrics,
            out,
            fields,
        } => {
            crate::plot::plot(&metrics, &out, fields.as_deref())?;
            say!("wrote {}", out.display());
            Ok(())
        }
        Cmd::Sample {
            file,
            load,
            out: Some(out),
            count,
            data,
            seed,
            engine,
            model,
            traverse,
            ..
        } => sample_images(
            &file,
            &load,
            &out,
            count as usize,
            seed,
            traverse.map(|k| k as usize),
            &engine,
            overrides(data, model),
        ),
        Cmd::Sample {
            file,
            load,
            length,
            temperature,
            seed,
            prime,
            engine,
            model,
            ..
        } => {
            let mut ov = overrides(Vec::new(), model);
            let kind = EngineKind::parse(&engine)?;
            let (lowered, env, vocab) = forward_with_weights(&file, Some(&load), &mut ov, seed)?;
            let vocab = vocab.ok_or_else(|| {
                format!(
                    "{}: the checkpoint has no vocabulary (sampling needs a model trained on a text data set such as songs)",
                    load.display()
                )
            })?;
            let opts = crate::sample::Options {
                length,
                temperature,
                seed,
                prime,
            };
            let text = crate::sample::sample(&lowered.graph, env, &vocab, &opts, kind)
                .map_err(|e| format!("{}: {e}", file.display()))?;
            print!("{text}");
            Ok(())
        }
        Cmd::Bench {
            file,
            data,
            batch,
            steps,
            repeats,
            threads,
            engine,
            no_opt,
            distributed,
            bucket_mb,
            model,
        } => {
            let ov = Overrides {
                batch: batch.map(|b| b as usize),
                no_opt,
                threads: threads.map_or(0, |t| t as usize),
                ..overrides(data, model)
            };
            if distributed {
                let runs = (steps as usize, repeats as usize);
                bench_distributed(&file, &ov, runs, &engine, bucket_bytes(bucket_mb))
            } else {
                bench(&file, &ov, steps as usize, repeats as usize, &engine)
            }
        }
        Cmd::Eval {
            file,
            load,
            data,
            ood,
            metrics,
            engine,
            model,
        } => eval(
            &file,
            &load,
            overrides(data, model),
            ood,
            metrics.as_deref(),
            &engine,
        ),
    }
}

/// The flags every model command shares.
fn overrides(data: Vec<(String, Option<PathBuf>)>, model: ModelArgs) -> Overrides {
    Overrides {
        data,
        sets: model.set,
        data_args: model.data_arg,
        ..Overrides::default()
    }
}

/// `--data-arg` without a data set has nothing to apply to.
fn no_data_args(ov: &Overrides, file: &Path) -> Result<(), String> {
    match ov.data_args.first() {
        Some((k, v)) => Err(format!(
            "--data-arg {k}={v}: {} has no training section and no --data names a data set",
            file.display()
        )),
        None => Ok(()),
    }
}

/// The chosen data set's signature and the lowered training graph and configuration.
fn lower_with_data(
    prog: &dlc_compiler::lower::Program,
    ov: &Overrides,
    mode: Mode,
) -> Result<
    (
        dlc_compiler::lower::Lowered,
        dlc_compiler::lower::TrainConfig,
    ),
    String,
> {
    let data = session::choose_data(prog, ov)?;
    let sig = session::signature(prog, &data, None)?;
    let (lowered, cfg) = prog
        .lower_training(&sig, mode)
        .map_err(|d| session::render_lowering(prog, ov, &d))?;
    Ok((lowered, session::apply(cfg, ov, &data)?))
}

fn check(file: &Path, ov: Overrides) -> Result<(), String> {
    check_program(file, &ov)?;
    say!("{}: ok", file.display());
    Ok(())
}

/// What `dlc check FILE` checks: the file parses, and its training section (or, without
/// one, its `forward`) lowers with types and shapes that fit.
pub fn check_program(file: &Path, ov: &Overrides) -> Result<(), String> {
    let prog = session::open_program(file, ov)?;
    let render = |d: Vec<dlc_dsl::Diagnostic>| session::render_lowering(&prog, ov, &d);
    if prog.train_def().is_some() || !ov.data.is_empty() {
        lower_with_data(&prog, ov, Mode::Train)?;
    } else {
        no_data_args(ov, file)?;
        prog.lower_predict(&[], Mode::Eval).map_err(render)?;
    }
    Ok(())
}

fn compile(
    file: &Path,
    emit: Emit,
    ov: Overrides,
    batch: Option<usize>,
    stats: bool,
    no_opt: bool,
) -> Result<(), String> {
    let prog = session::open_program(file, &ov)?;
    if emit == Emit::Ast {
        say!("{:#?}", prog.file);
        return Ok(());
    }
    let render = |d: Vec<dlc_dsl::Diagnostic>| session::render_lowering(&prog, &ov, &d);
    // The graph to optimize: the training step, or `forward` for a file without training.
    let mut file_batch = None;
    // The forward graph, then per training step (one per objective; the forward graph
    // for a file without training): its header, gradient graph, step graph and stats.
    type Step = (
        Option<String>,
        Option<dlc_compiler::ir::Graph>,
        dlc_compiler::ir::Graph,
        Option<dlc_compiler::autodiff::GradStats>,
    );
    let (ir, steps): (dlc_compiler::ir::Graph, Vec<Step>) =
        if prog.train_def().is_none() && ov.data.is_empty() {
            if emit == Emit::Grad {
                return Err(format!(
                    "{}: --emit grad needs a training section with a loss",
                    file.display()
                ));
            }
            no_data_args(&ov, file)?;
            let l = prog.lower_predict(&[], Mode::Eval).map_err(render)?;
            (l.graph.clone(), vec![(None, None, l.graph, None)])
        } else {
            let (lowered, cfg) = lower_with_data(&prog, &ov, Mode::Train)?;
            let graphs = dlc_compiler::train::step_graphs(&lowered, &cfg)
                .map_err(|e| format!("{}: {e}", file.display()))?;
            file_batch = Some(cfg.batch);
            let several = graphs.len() > 1;
            let steps = graphs
                .into_iter()
                .map(|(o, tg)| {
                    let header = several.then(|| {
                        format!(
                            "# objective {}: over {}, {}",
                            o.name,
                            o.params.join(", "),
                            o.optimizer(&cfg).name()
                        )
                    });
                    (header, Some(tg.grad_graph), tg.graph, Some(tg.grad_stats))
                })
                .collect();
            (lowered.graph, steps)
        };
    if emit == Emit::Ir {
        say_raw!("{}", print_graph(&ir));
        return Ok(());
    }
    // Plans and memory are made at --batch, else the file's own batch size.
    let batch = batch.or(file_batch).unwrap_or(64);
    for (header, grad, step, grad_stats) in steps {
        if let Some(h) = header {
            say!("{h}");
        }
        show_step(
            emit,
            &step,
            grad.as_ref(),
            grad_stats.as_ref(),
            no_opt,
            batch,
            stats,
        )?;
    }
    Ok(())
}

/// `dlc compile` of one training step (or of the forward graph): the stage asked for,
/// then with `--stats` its statistics.
fn show_step(
    emit: Emit,
    step: &dlc_compiler::ir::Graph,
    grad: Option<&dlc_compiler::ir::Graph>,
    grad_stats: Option<&dlc_compiler::autodiff::GradStats>,
    no_opt: bool,
    batch: usize,
    stats: bool,
) -> Result<(), String> {
    let step = step.clone();
    let opt = (!no_opt).then(|| dlc_compiler::opt::optimize(&step));
    match emit {
        Emit::Ir | Emit::Ast => {}
        Emit::Grad => say_raw!("{}", print_graph(grad.expect("training graph"))),
        Emit::Plan | Emit::Clif => {
            let g = opt.as_ref().map_or(&step, |o| &o.graph).clone();
            let mut jit = dlc_compiler::jit::exec::JitGraph::new(g, 1)?;
            let syms: std::collections::HashMap<String, usize> =
                [("B".to_string(), batch)].into_iter().collect();
            let lines = jit.plan_all(&syms)?;
            if emit == Emit::Plan {
                say!("# plan at B = {}", syms["B"]);
                for l in lines {
                    say!("{l}");
                }
            } else {
                for (name, text) in jit.clif() {
                    say!("; {name}\n{text}");
                }
                let (mr, nr) = dlc_compiler::jit::sgemm::Sgemm::global().tile();
                say!(
                    "; sgemm: the JIT's {mr}×{nr} F32X4 GEMM micro-kernel (for the shapes the cost table gives it)\n{}",
                    dlc_compiler::jit::sgemm::Sgemm::global().clif()
                );
            }
        }
        _ => say_raw!("{}", print_graph(opt.as_ref().map_or(&step, |o| &o.graph))),
    }
    if stats {
        // The JIT's memory plan of one run of the (optimized) graph.
        let g = opt.as_ref().map_or(&step, |o| &o.graph).clone();
        let outs: Vec<String> = g.outputs.iter().map(|(n, _)| n.clone()).collect();
        let refs: Vec<&str> = outs.iter().map(|s| s.as_str()).collect();
        let b = batch;
        let syms: std::collections::HashMap<String, usize> =
            [("B".to_string(), b)].into_iter().collect();
        let mut jit = dlc_compiler::jit::exec::JitGraph::new(g, 1)?;
        let mem = jit.memory_plan(&refs, &syms)?;
        say!("kernels_interpreted: {}", jit.interpreted_kernels(&syms)?);
        say!("peak_bytes: {}", mem.arena_bytes);
        say!("peak_live_bytes: {}", mem.peak_live_bytes);
        say!("intermediate_bytes: {}", mem.total_bytes);
        say!("memory_plan_batch: {b}");
        let before = step.schedule().len();
        if let Some(s) = &grad_stats {
            say!("grad_egraph_nodes: {}", s.egraph_nodes);
            say!("grad_stop_reason: {}", s.stop_reason);
        }
        say!("nodes_before: {before}");
        match &opt {
            None => {
                say!("nodes_after: {before}");
                say!("optimizer: off (--no-opt)");
                say!("kernels: {}", dlc_compiler::opt::fuse::kernel_count(&step));
            }
            Some(o) => {
                let egg: Vec<&dlc_compiler::opt::PhaseReport> =
                    o.reports.iter().filter(|r| r.egraph_nodes > 0).collect();
                say!("nodes_after: {}", o.graph.schedule().len());
                say!(
                    "egraph_nodes: {}",
                    egg.iter().map(|r| r.egraph_nodes).max().unwrap_or(0)
                );
                say!(
                    "iterations: {}",
                    egg.iter().map(|r| r.iterations).sum::<usize>()
                );
                let reasons: Vec<String> = egg
                    .iter()
                    .map(|r| format!("{} {}", r.name, r.stop_reason))
                    .collect();
                let all_saturated = egg.iter().all(|r| r.stop_reason == "saturated");
                say!(
                    "stop_reason: {}",
                    if all_saturated {
                        "saturated".to_string()
                    } else {
                        reasons.join(", ")
                    }
                );
                say!(
                    "saturation_ms: {:.3}",
                    egg.iter().map(|r| r.saturation_ms).sum::<f64>()
                );
                say!(
                    "extract_ms: {:.3}",
                    egg.iter().map(|r| r.extract_ms).sum::<f64>()
                );
                say!("kernels: {}", o.kernels);
                for r in &o.reports {
                    say!("{}", r.render());
                }
            }
        }
    }
    Ok(())
}

/// Parse nested JSON arrays of numbers into a tensor.
/// `--input NAME=@PATH`: the tensor NAME (or the file's only tensor) of a `.safetensors`
/// file, or the array of a `.json` file.
fn file_tensor(name: &str, path: &Path) -> Result<ArrayD<f32>, String> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    match ext {
        "json" => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("--input {name}: {}: {e}", path.display()))?;
            json_tensor(name, &text).map_err(|e| format!("{e} (in {})", path.display()))
        }
        "safetensors" => {
            let (tensors, _) =
                dlc_data::tensorfile::read(path).map_err(|e| format!("--input {name}: {e}"))?;
            let t = match tensors.iter().find(|t| t.name == name) {
                Some(t) => t,
                None if tensors.len() == 1 => &tensors[0],
                None => {
                    let names: Vec<&str> = tensors.iter().map(|t| t.name.as_str()).collect();
                    return Err(format!(
                        "--input {name}: {} has no tensor `{name}` (it has {})",
                        path.display(),
                        if names.is_empty() {
                            "none".to_string()
                        } else {
                            names.join(", ")
                        }
                    ));
                }
            };
            ArrayD::from_shape_vec(IxDyn(&t.shape), t.data.clone())
                .map_err(|e| format!("--input {name}: {}: {e}", path.display()))
        }
        _ => Err(format!(
            "--input {name}=@{}: the file must end in .json or .safetensors",
            path.display()
        )),
    }
}

fn json_tensor(name: &str, text: &str) -> Result<ArrayD<f32>, String> {
    let v: Value =
        serde_json::from_str(text).map_err(|e| format!("--input {name}: not JSON: {e}"))?;
    let mut shape = Vec::new();
    let mut data = Vec::new();
    fn walk(
        v: &Value,
        depth: usize,
        shape: &mut Vec<usize>,
        data: &mut Vec<f32>,
        name: &str,
    ) -> Result<(), String> {
        match v {
            Value::Number(n) => {
                if depth != shape.len() {
                    return Err(format!("--input {name}: ragged array"));
                }
                data.push(n.as_f64().unwrap_or(f64::NAN) as f32);
                Ok(())
            }
            Value::Array(items) => {
                if depth == shape.len() {
                    if !data.is_empty() {
                        return Err(format!("--input {name}: ragged array"));
                    }
                    shape.push(items.len());
                } else if shape[depth] != items.len() {
                    return Err(format!(
                        "--input {name}: ragged array (rows of {} and {})",
                        shape[depth],
                        items.len()
                    ));
                }
                items
                    .iter()
                    .try_for_each(|i| walk(i, depth + 1, shape, data, name))
            }
            other => Err(format!(
                "--input {name}: expected numbers or arrays, found {other}"
            )),
        }
    }
    walk(&v, 0, &mut shape, &mut data, name)?;
    ArrayD::from_shape_vec(IxDyn(&shape), data).map_err(|e| format!("--input {name}: {e}"))
}

fn to_json(a: &ArrayD<f32>) -> Value {
    fn rec(a: ndarray::ArrayViewD<f32>) -> Value {
        if a.ndim() == 0 {
            return json!(a.iter().next().copied().unwrap_or(f32::NAN) as f64);
        }
        Value::Array(a.outer_iter().map(rec).collect())
    }
    rec(a.view())
}

/// The forward graph of a model file and its weights: from a checkpoint (whose recorded
/// `--set` and `--data-arg` values apply, and whose vocabulary gives the songs data set's
/// size) or, without one, the initial weights of the seed. Also the vocabulary.
fn forward_with_weights(
    file: &Path,
    load: Option<&Path>,
    ov: &mut Overrides,
    seed: u64,
) -> Result<(dlc_compiler::lower::Lowered, Env<f32>, Option<Vec<char>>), String> {
    function_with_weights(file, load, ov, seed, "forward")
}

/// [`forward_with_weights`] for any function of the main model (`decode`).
fn function_with_weights(
    file: &Path,
    load: Option<&Path>,
    ov: &mut Overrides,
    seed: u64,
    func: &str,
) -> Result<(dlc_compiler::lower::Lowered, Env<f32>, Option<Vec<char>>), String> {
    let ck = match load {
        Some(p) => Some((Checkpoint::load(p)?, p)),
        None => None,
    };
    let mut vocab = None;
    if let Some((ck, p)) = &ck {
        ov.recorded = Some(ck.recorded(p)?);
        vocab = crate::checkpoint::vocabulary(ck).map_err(|e| format!("{}: {e}", p.display()))?;
    }
    let prog = session::open_program(file, ov)?;
    let render = |d: Vec<dlc_dsl::Diagnostic>| session::render_lowering(&prog, ov, &d);
    let dims = match session::choose_data(&prog, ov) {
        Ok(data) => session::signature(&prog, &data, vocab.as_deref())?.dims,
        Err(_) => {
            no_data_args(ov, file)?;
            vec![]
        }
    };
    let lowered = prog
        .lower_function(func, &dims, Mode::Eval)
        .map_err(render)?;
    let mut env = Env::new(seed, 0);
    match &ck {
        Some((ck, p)) => {
            let sets = ov.sets_in_force();
            for info in &lowered.params {
                let t = ck.tensors.get(&info.name).ok_or_else(|| {
                    format!(
                        "{}: no tensor `{}` in the checkpoint",
                        p.display(),
                        info.name
                    )
                })?;
                if t.shape() != &info.shape[..] {
                    let note = if sets.is_empty() {
                        String::new()
                    } else {
                        let v: Vec<String> =
                            sets.iter().map(|(k, v)| format!("--set {k}={v}")).collect();
                        format!(" (this run has {})", v.join(" "))
                    };
                    return Err(format!(
                        "{}: `{}` has shape {:?}, the model needs {:?}{note}",
                        p.display(),
                        info.name,
                        t.shape(),
                        info.shape
                    ));
                }
                env.values.insert(info.name.clone(), t.clone());
            }
        }
        None => {
            if !lowered.params.is_empty() {
                eprintln!("note: no --load given; using the initial weights (seed {seed})");
            }
            for info in &lowered.params {
                env.values
                    .insert(info.name.clone(), crate::init::init_param(info, seed));
            }
        }
    }
    Ok((lowered, env, vocab))
}

fn run_forward(
    file: &Path,
    (load, check_numerics): (Option<&Path>, bool),
    inputs: &[String],
    mut ov: Overrides,
    engine: &str,
    seed: u64,
) -> Result<(), String> {
    let kind = EngineKind::parse(engine)?;
    let (lowered, mut env, _) = forward_with_weights(file, load, &mut ov, seed)?;
    let wanted = lowered
        .graph
        .leaves(|op| matches!(op, dlc_compiler::ops::Op::Input { .. }));
    for spec in inputs {
        let (name, text) = spec
            .split_once('=')
            .ok_or_else(|| format!("--input {spec}: expected NAME=JSON"))?;
        if !wanted.iter().any(|(n, _)| n == name) {
            let names: Vec<&str> = wanted.iter().map(|(n, _)| n.as_str()).collect();
            return Err(format!(
                "--input {name}: `forward` has no parameter `{name}` (it takes {})",
                names.join(", ")
            ));
        }
        let value = match text.strip_prefix('@') {
            Some(path) => file_tensor(name, Path::new(path))?,
            None => json_tensor(name, text)?,
        };
        env.values.insert(name.to_string(), value);
    }
    for (n, _) in &wanted {
        if !env.values.contains_key(n) {
            return Err(format!("missing --input {n}=JSON"));
        }
    }
    // The same optimizer as training: fused kernels, also for the forward pass alone.
    let engine = Engine::new(kind, dlc_compiler::opt::optimize(&lowered.graph).graph, 1)?;
    let out = engine
        .run(&env, &["pred"])
        .map_err(|e| format!("{}: {e}", file.display()))?;
    if check_numerics && out[0].iter().any(|v| !v.is_finite()) {
        // The forward pass again on the interpreter, as lowered, to find where.
        let source = session::load_program(file)?.source;
        let found = crate::numerics::first_not_finite(&lowered.graph, &env, &source, "")
            .map_err(|e| format!("{}: {e}", file.display()))?;
        return Err(found.unwrap_or_else(|| {
            format!(
                "{}: the prediction is not finite, yet the reference interpreter gives finite values throughout (--check-numerics)",
                file.display()
            )
        }));
    }
    say!("{}", to_json(&out[0]));
    Ok(())
}

fn train(a: TrainArgs) -> Result<(), String> {
    // A checkpoint that cannot be written fails now, not after the first epoch.
    if let Some(p) = &a.save {
        let folder = p.parent().filter(|f| !f.as_os_str().is_empty());
        if let Some(f) = folder.filter(|f| !f.is_dir()) {
            return Err(format!(
                "--save {}: the folder {} does not exist",
                p.display(),
                f.display()
            ));
        }
    }
    if a.distributed {
        if a.check_numerics {
            return Err("--check-numerics does not work with --distributed yet".into());
        }
        return train_distributed(a);
    }
    let kind = EngineKind::parse(&a.engine)?;
    let (resume, ov) = train_overrides(&a)?;
    let (setup, data_path) = session::compile(&a.file, &ov, kind)?;
    crate::memory::check_fits(&setup, &a.file, None)?;
    if a.check_numerics && setup.cfg.search.is_some() {
        return Err(format!(
            "{}: --check-numerics checks training on a data set or an environment; this section searches architectures on {}",
            a.file.display(),
            setup.cfg.data
        ));
    }
    if setup.cfg.agent.is_some() {
        return train_agent(&a, &setup, kind, resume.as_ref());
    }
    if setup.cfg.search.is_some() {
        if a.epochs.is_some() || a.batch.is_some() {
            return Err(format!(
                "{}: an architecture search trains every child with its own section's epochs and batch (--epochs and --batch do not apply; --steps sets the controller steps)",
                a.file.display()
            ));
        }
        if a.save.is_some() || a.resume.is_some() {
            return Err(format!(
                "{}: an architecture search keeps no checkpoint (--save, --resume); its metrics name the best architecture and its test accuracy",
                a.file.display()
            ));
        }
        // Ctrl-C from here on ends the search after the running child.
        crate::interrupt::install();
        return crate::search::run(&setup, &ov, kind, a.seed, a.steps, a.metrics.as_deref());
    }
    let scaling = match &resume {
        Some((ck, _)) => scaling_of(ck),
        None => None,
    };
    let data = session::load_data(&setup.cfg, data_path.as_deref(), scaling.as_ref())?;
    // A step's batch: `batch` rows, or the whole graph.
    let rows = if data.sparse.is_empty() {
        setup.cfg.batch.min(data.train.n)
    } else {
        data.train.n
    };
    crate::memory::check_fits(&setup, &a.file, Some(rows))?;
    let st = match &resume {
        Some((ck, p)) => {
            same_vocabulary(ck, p, &data)?;
            let batch: usize = ck.meta_num("batch", p)?;
            if batch != setup.cfg.batch {
                return Err(format!(
                    "{}: checkpoint was trained with batch {batch}; resume with --batch {batch} (the step count and data order depend on it)",
                    p.display()
                ));
            }
            TrainState::from_checkpoint(&setup, ck, p)?
        }
        None => TrainState::fresh(&setup, a.seed),
    };
    let mut sink = MetricsSink::open(
        a.metrics.as_deref(),
        kind.name(),
        setup.kernels(),
        session::args_json(&setup.cfg.data_args),
    )?;
    say!(
        "training {} on {} ({} train / {} test examples{}), {}, batch {}, {} epochs, engine {}",
        setup.model_name(),
        data.name,
        data.train.n,
        data.test.n,
        data.val
            .as_ref()
            .map(|v| format!(" / {} validation", v.n))
            .unwrap_or_default(),
        optimizers(&setup),
        setup.cfg.batch,
        setup.cfg.epochs,
        kind.name()
    );
    let stall_at_step = stall_at(trainer::STALL_ENV, "a step count")?;
    let limits = RunLimits {
        epochs: setup.cfg.epochs,
        steps: a.steps,
        stall_at_step,
        quiet: false,
        check_numerics: a.check_numerics,
    };
    // `--save` is written (atomically) at the end of every epoch, with everything
    // `--resume` needs, and once more when training ends.
    let mut save_epoch = |st: &TrainState| match &a.save {
        Some(p) => st.to_checkpoint(&setup, &data).save(p),
        None => Ok(()),
    };
    // Ctrl-C from here on stops training after the running step (`interrupt`).
    crate::interrupt::install();
    let mut st = trainer::train(&setup, &data, st, &limits, &mut sink, &mut save_epoch)?;
    if crate::interrupt::requested() {
        let at = format!(
            "interrupted after step {} (epoch {})",
            st.step,
            st.epoch + 1
        );
        return interrupted(&a, &at, st.to_checkpoint(&setup, &data));
    }
    trainer::restore_best(&setup, &data, &mut st, &mut sink)?;
    // A random-label run (a `limit` or `labels` data-set argument other than the default)
    // ends with the training set in evaluation mode (dropout off), with the weights kept:
    // the figure Zhang et al. report for memorisation, as the last metrics line.
    let random_labels = setup
        .cfg
        .data_args
        .iter()
        .any(|(k, v)| (k == "limit" && v != "0") || (k == "labels" && v != "true"));
    if random_labels && let dlc_data::Task::Classification { .. } = data.task {
        let s = trainer::evaluate(&setup.eval_engine, &st.params, &data.train, &data, st.seed)?;
        if let Some(acc) = s.acc {
            let mut m = Map::new();
            m.insert("epoch".into(), json!(st.epoch));
            m.insert("step".into(), json!(st.step));
            m.insert("train_eval_loss".into(), json!(s.loss));
            m.insert("train_eval_acc".into(), json!(acc));
            say!(
                "training set in evaluation mode: train_eval_loss {:.4}  train_eval_acc {acc:.4}",
                s.loss
            );
            sink.write(m)?;
        }
    }
    if let Some(p) = &a.save {
        // After early stopping this holds the restored best weights.
        st.to_checkpoint(&setup, &data).save(p)?;
        say!("saved {}", p.display());
    }
    Ok(())
}

/// The count a test-only stall variable (`var`) gives, if set: where a run stops and waits
/// to be interrupted or killed.
fn stall_at(var: &str, what: &str) -> Result<Option<u64>, String> {
    match std::env::var(var) {
        Ok(v) => v
            .parse()
            .map(Some)
            .map_err(|_| format!("{var}={v:?}: not {what}")),
        Err(_) => Ok(None),
    }
}

/// After Ctrl-C: write the state as it stands (after the last finished step, or episode on
/// an environment; the best weights kept apart) to `--save`, and say where training stopped
/// (`at`) and how to go on.
fn interrupted(a: &TrainArgs, at: &str, ck: Checkpoint) -> Result<(), String> {
    match &a.save {
        Some(p) => {
            ck.save(p)?;
            say!(
                "{at}; saved {p}; continue with: dlc train {} --resume {p} (and the same flags)",
                a.file.display(),
                p = p.display()
            );
        }
        None => say!("{at}; nothing saved (no --save)"),
    }
    Ok(())
}

/// The checkpoint `--resume` names (loaded) and the overrides of `dlc train`'s flags.
fn train_overrides(a: &TrainArgs) -> Result<(Option<(Checkpoint, PathBuf)>, Overrides), String> {
    let resume = match &a.resume {
        Some(p) => Some((Checkpoint::load(p)?, p.clone())),
        None => None,
    };
    let ov = Overrides {
        epochs: a.epochs.map(|e| e as usize),
        batch: a.batch.map(|b| b as usize),
        optimizer: a.optimizer.clone(),
        lr: a.lr,
        no_opt: a.no_opt,
        threads: a.threads.map_or(0, |t| t as usize),
        recorded: match &resume {
            Some((ck, p)) => Some(ck.recorded(p)?),
            None => None,
        },
        ..overrides(a.data.clone(), a.model.clone())
    };
    Ok((resume, ov))
}

/// `dlc train` of a section on an environment.
fn train_agent(
    a: &TrainArgs,
    setup: &session::Setup,
    kind: EngineKind,
    resume: Option<&(Checkpoint, PathBuf)>,
) -> Result<(), String> {
    use crate::agent::{Counters, Rows, Run};
    let agent = setup.cfg.agent.as_ref().expect("an environment section");
    if a.epochs.is_some() || a.batch.is_some() {
        return Err(format!(
            "{}: --epochs and --batch belong to data sets; training on {} counts environment steps (--steps, or `steps = N` in the file)",
            a.file.display(),
            agent.env
        ));
    }
    let run = match resume {
        Some((ck, p)) => Run::from_checkpoint(setup, ck, p)?,
        None => Run {
            st: TrainState::fresh(setup, a.seed),
            counters: Counters::default(),
            rows: Rows::default(),
            last: None,
        },
    };
    let mut sink = MetricsSink::open(
        a.metrics.as_deref(),
        kind.name(),
        setup.kernels(),
        Map::new(),
    )?;
    say!(
        "training {} on {}, {}, {} environment steps, engine {}",
        setup.model_name(),
        agent.env,
        optimizers(setup),
        a.steps.unwrap_or(agent.steps),
        kind.name()
    );
    let checkpoint = |run: &Run| run.checkpoint(setup, &agent.env);
    let mut save = |run: &Run| match &a.save {
        Some(p) => checkpoint(run).save(p),
        None => Ok(()),
    };
    let stall = stall_at(crate::agent::STALL_ENV, "an episode count")?;
    // Ctrl-C from here on stops training at the end of the running episode.
    crate::interrupt::install();
    let limits = crate::agent::Limits {
        budget: a.steps,
        stall_after_episode: stall,
        check_numerics: a.check_numerics,
    };
    let run = crate::agent::train(setup, run, &limits, &mut sink, &mut save)?;
    if crate::interrupt::requested() {
        let at = format!(
            "interrupted after episode {} (environment step {})",
            run.counters.episodes, run.counters.env_steps
        );
        return interrupted(a, &at, checkpoint(&run));
    }
    if let Some(p) = &a.save {
        // The weights evaluated (the best snapshot when it was restored).
        checkpoint(&run).save(p)?;
        say!("saved {}", p.display());
    }
    Ok(())
}

/// DESIGN §3: four batches from the data set, cycled; warm-up; the median of repeats.
fn bench(
    file: &Path,
    ov: &Overrides,
    steps: usize,
    repeats: usize,
    engine: &str,
) -> Result<(), String> {
    let kind = EngineKind::parse(engine)?;
    let (setup, data_path) = session::compile(file, ov, kind)?;
    crate::memory::check_fits(&setup, file, None)?;
    if let Some(agent) = &setup.cfg.agent {
        return Err(format!(
            "{}: dlc bench times training steps on a data set; training on {} reports its speed itself: the last metrics line of dlc train has env_steps_per_s and where the time went (act_s, env_s, update_s, eval_s)",
            file.display(),
            agent.env
        ));
    }
    if setup.cfg.search.is_some() {
        return Err(format!(
            "{}: dlc bench times training steps on a data set; an architecture search reports each child's compile_s and train_s in its metrics lines",
            file.display()
        ));
    }
    let data = session::load_data(&setup.cfg, data_path.as_deref(), None)?;
    if !data.sparse.is_empty() {
        return Err(format!(
            "{}: dlc bench times minibatch steps; {} is one graph trained full-batch, and dlc train reports its examples_per_s",
            file.display(),
            data.name
        ));
    }
    let b = setup.cfg.batch;
    if data.train.n < b {
        return Err(format!(
            "batch {b} is larger than the {} training examples",
            data.train.n
        ));
    }
    crate::memory::check_fits(&setup, file, Some(b))?;
    let mut batches: Vec<(ArrayD<f32>, ArrayD<f32>)> = (0..4)
        .map(|i| {
            let rows: Vec<usize> = (0..b).map(|r| (i * b + r) % data.train.n).collect();
            trainer::batch(&data.train, &rows, &data.x_shape, &data.y_shape)
        })
        .collect();
    let mut st = TrainState::fresh(&setup, 0);
    let runners: Vec<trainer::StepRunner> = setup
        .steps
        .iter()
        .map(|s| trainer::StepRunner::new(&st, s))
        .collect();
    let mut k = 0;
    // Batches stay in memory: each step borrows its inputs and gives them back.
    let mut one = |st: &mut TrainState| -> Result<(), String> {
        let (x, y) = &mut batches[k % 4];
        k += 1;
        let mut taken = std::mem::take(x);
        for (s, r) in setup.steps.iter().zip(&runners) {
            let out = r.run(&s.engine, st, taken, y)?;
            if let Some(p) = out.pred {
                s.engine.recycle(p);
            }
            taken = out.x;
        }
        st.step += 1;
        *x = taken;
        Ok(())
    };
    for _ in 0..steps.max(10) {
        one(&mut st)?;
    }
    let mut times = Vec::new();
    for _ in 0..repeats {
        let t0 = std::time::Instant::now();
        for _ in 0..steps {
            one(&mut st)?;
        }
        times.push(t0.elapsed().as_secs_f64() * 1e3 / steps as f64);
    }
    times.sort_by(|a, b| a.total_cmp(b));
    let ms = times[times.len() / 2];
    let threads = session::threads(ov.threads);
    let mut m = Map::new();
    m.insert("model".into(), json!(file.display().to_string()));
    m.insert("ms_per_step".into(), json!(ms));
    m.insert("steps_per_s".into(), json!(1e3 / ms));
    m.insert("examples_per_s".into(), json!(b as f64 * 1e3 / ms));
    m.insert("batch".into(), json!(b));
    m.insert(
        "threads".into(),
        json!(if kind == EngineKind::Reference {
            1
        } else {
            threads
        }),
    );
    m.insert("engine".into(), json!(kind.name()));
    m.insert("kernels".into(), json!(setup.kernels()));
    if let Some((native, total)) = setup.native_kernels() {
        m.insert("native_kernels".into(), json!(format!("{native}/{total}")));
    }
    m.insert("min_ms".into(), json!(times[0]));
    m.insert("max_ms".into(), json!(times[times.len() - 1]));
    say!("{}", Value::Object(m));
    Ok(())
}

/// `dlc sample --out`: the first `count` test images over the model's reconstructions of
/// them, as a PNG grid or a tensor file.
#[allow(clippy::too_many_arguments)]
fn sample_images(
    file: &Path,
    load: &Path,
    out: &Path,
    count: usize,
    seed: u64,
    traverse: Option<usize>,
    engine: &str,
    mut ov: Overrides,
) -> Result<(), String> {
    let what = crate::images::OutKind::of(out)?;
    let kind = EngineKind::parse(engine)?;
    // A model with `decode(z)` is sampled from its prior unless --data asks for
    // reconstructions; one without is an autoencoder of its file's data set.
    let prog = session::open_program(file, &ov)?;
    let has_decode = prog
        .main_model()
        .map_err(|d| {
            format!(
                "{}: {}",
                file.display(),
                d.iter()
                    .map(|d| d.message.clone())
                    .collect::<Vec<_>>()
                    .join("; ")
            )
        })?
        .fns
        .iter()
        .any(|f| f.name.name == "decode");
    if (ov.data.is_empty() && has_decode) || traverse.is_some() {
        // A generative model: its `decode` from latent codes drawn from the prior
        // N(0, I), or moved along one latent dimension.
        let (lowered, env, _) = function_with_weights(file, Some(load), &mut ov, seed, "decode")
            .map_err(|e| {
                format!("{e}\n(dlc sample --out draws a model's `decode(z)` from random codes; for an autoencoder's reconstructions, pass --data NAME=PATH)")
            })?;
        let images = crate::images::decode(file, &lowered, env, count, seed, traverse, kind)?;
        match what {
            crate::images::OutKind::Png => {
                let per_line = if traverse.is_some() { 11 } else { 8 };
                crate::images::grid_lines(&[&images], per_line)?.save_png(out)?
            }
            crate::images::OutKind::Tensors => crate::images::save_tensors(out, &images)?,
        }
        say!(
            "wrote {} ({})",
            out.display(),
            match traverse {
                Some(k) => format!("latent dimension {k} from -3 to 3 in 11 steps, for 5 codes"),
                None => format!("{} samples from the prior", images.shape()[0]),
            }
        );
        return Ok(());
    }
    let (lowered, env, _) = forward_with_weights(file, Some(load), &mut ov, seed)?;
    let choice = session::choose_data(&prog, &ov)?;
    let data = dlc_data::load_with_args(
        &choice.name,
        choice.path.as_deref(),
        false,
        None,
        &choice.args,
    )
    .map_err(|e| e.to_string())?;
    let n = count.min(data.test.n);
    if n == 0 {
        return Err(format!("data set {} has no test images", data.name));
    }
    let rows: Vec<usize> = (0..n).collect();
    let (x, _) = trainer::batch(&data.test, &rows, &data.x_shape, &data.y_shape);
    let recon = crate::images::reconstruct(file, &lowered, env, x.clone(), kind)?;
    match what {
        crate::images::OutKind::Png => crate::images::grid(&[&x, &recon])?.save_png(out)?,
        crate::images::OutKind::Tensors => crate::images::save_tensors(out, &recon)?,
    }
    say!(
        "wrote {} ({n} test images of {} and their reconstructions)",
        out.display(),
        data.name
    );
    Ok(())
}

/// What the step minimises with what: `adam (lr 0.001)`, or per objective for a section
/// with several (`d_loss by adam (lr 0.0002) over disc, then g_loss by …`).
fn optimizers(setup: &session::Setup) -> String {
    let cfg = &setup.cfg;
    let one = |o: &dlc_compiler::lower::Optimizer| format!("{} (lr {})", o.name(), o.lr());
    if cfg.objectives.len() <= 1 {
        return one(&cfg.optimizer);
    }
    let members = |o: &dlc_compiler::lower::Objective| {
        let mut m: Vec<&str> = o
            .params
            .iter()
            .map(|p| p.split('.').next().unwrap_or(p))
            .collect();
        m.dedup();
        m.join(", ")
    };
    cfg.objectives
        .iter()
        .map(|o| {
            format!(
                "{} by {} over {}",
                o.name,
                one(o.optimizer(cfg)),
                members(o)
            )
        })
        .collect::<Vec<_>>()
        .join(", then ")
}

fn scaling_of(ck: &Checkpoint) -> Option<dlc_data::Scaling> {
    let m = ck.tensors.get("scaling.mean")?;
    let s = ck.tensors.get("scaling.std")?;
    Some(dlc_data::Scaling {
        mean: m.iter().copied().collect(),
        std: s.iter().copied().collect(),
    })
}

/// A checkpoint trained on text must meet the same vocabulary: ids would otherwise stand
/// for other characters.
fn same_vocabulary(ck: &Checkpoint, path: &Path, data: &dlc_data::Dataset) -> Result<(), String> {
    let theirs =
        crate::checkpoint::vocabulary(ck).map_err(|e| format!("{}: {e}", path.display()))?;
    match (theirs, &data.vocab) {
        (Some(a), Some(b)) if &a != b => Err(format!(
            "{}: the checkpoint's vocabulary ({} characters) differs from that of {} ({} characters), so character ids would stand for other characters",
            path.display(),
            a.len(),
            data.source,
            b.len()
        )),
        (Some(a), None) => Err(format!(
            "{}: the checkpoint was trained on text with a vocabulary of {} characters, but data set {} has none",
            path.display(),
            a.len(),
            data.name
        )),
        _ => Ok(()),
    }
}

fn eval(
    file: &Path,
    load: &Path,
    mut ov: Overrides,
    ood: Option<(String, Option<PathBuf>)>,
    metrics: Option<&Path>,
    engine: &str,
) -> Result<(), String> {
    let kind = EngineKind::parse(engine)?;
    let ck = Checkpoint::load(load)?;
    if let Some(opt) = ck.meta.get("optimizer") {
        ov.optimizer = Some(opt.clone());
    }
    ov.recorded = Some(ck.recorded(load)?);
    let (setup, data_path) = session::compile(file, &ov, kind)?;
    if setup.cfg.search.is_some() {
        return Err(format!(
            "{}: an architecture search keeps no checkpoint to evaluate; its last metrics line has the best child's best_test_acc",
            file.display()
        ));
    }
    if let Some(agent) = &setup.cfg.agent {
        if ood.is_some() {
            return Err(format!(
                "{}: --ood compares a classifier's uncertainty on two data sets; this model acts on {}",
                file.display(),
                agent.env
            ));
        }
        let mut st = TrainState::from_checkpoint(&setup, &ck, load)?;
        let (mean, std) = crate::agent::evaluate_final(&setup, &mut st.params)?;
        let mut sink =
            MetricsSink::open(metrics, kind.name(), setup.eval_engine.kernels, Map::new())?;
        let mut m = Map::new();
        m.insert("env".into(), json!(agent.env));
        m.insert("eval_return_mean".into(), json!(mean));
        m.insert("eval_return_std".into(), json!(std));
        m.insert("eval_episodes".into(), json!(crate::agent::FINAL_EPISODES));
        let shown: Vec<String> = m.iter().map(|(k, v)| format!("{k} {v}")).collect();
        say!("{}", shown.join("  "));
        return sink.write(m);
    }
    let data = session::load_data(&setup.cfg, data_path.as_deref(), scaling_of(&ck).as_ref())?;
    same_vocabulary(&ck, load, &data)?;
    let st = TrainState::from_checkpoint(&setup, &ck, load)?;
    let mut sink = MetricsSink::open(
        metrics,
        kind.name(),
        setup.eval_engine.kernels,
        session::args_json(&setup.cfg.data_args),
    )?;
    let test = trainer::evaluate(&setup.eval_engine, &st.params, &data.test, &data, st.seed)?;
    let mut m = Map::new();
    m.insert("epoch".into(), json!(st.epoch));
    m.insert("step".into(), json!(st.step));
    trainer::put_scores(&mut m, "test", &test);
    let shown: Vec<String> = m.iter().map(|(k, v)| format!("{k} {v}")).collect();
    say!("{}", shown.join("  "));
    sink.write(m)?;
    if let Some(attack) = &setup.cfg.attack {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let grad = crate::attack::input_gradient(&setup, kind, threads)?;
        for name in crate::attack::ATTACKS {
            for &eps in &attack.epsilons {
                let s = crate::attack::evaluate(
                    name,
                    eps,
                    &setup.eval_engine,
                    &grad,
                    &st.params,
                    &data.test,
                    &data,
                    st.seed,
                )?;
                let mut m = Map::new();
                m.insert("epoch".into(), json!(st.epoch));
                m.insert("step".into(), json!(st.step));
                m.insert("attack".into(), json!(name));
                m.insert("epsilon".into(), json!(eps));
                trainer::put_scores(&mut m, "test", &s);
                let shown: Vec<String> = m.iter().map(|(k, v)| format!("{k} {v}")).collect();
                say!("{}", shown.join("  "));
                sink.write(m)?;
            }
        }
    }
    if setup.cfg.mc_dropout.is_some() || ood.is_some() {
        let other = match &ood {
            Some((name, path)) => Some(
                dlc_data::load_with_args(name, path.as_deref(), false, data.scaling.as_ref(), &[])
                    .map_err(|e| format!("--ood: {e}"))?,
            ),
            None => None,
        };
        let mut m = Map::new();
        m.insert("epoch".into(), json!(st.epoch));
        m.insert("step".into(), json!(st.step));
        m.extend(crate::uncertainty::report(
            &setup,
            &st.params,
            &data,
            st.seed,
            other.as_ref(),
        )?);
        let shown: Vec<String> = m.iter().map(|(k, v)| format!("{k} {v}")).collect();
        say!("{}", shown.join("  "));
        sink.write(m)?;
    }
    Ok(())
}

/// `--bucket-mb`'s default: see docs/scaling.md.
const DEFAULT_BUCKET_MB: f64 = 0.25;

/// `--bucket-mb`: a size in MiB, at least 0 (0: one gradient per bucket).
fn parse_bucket_mb(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && (0.0..=1024.0).contains(&v) => Ok(v),
        _ => Err(format!("`{s}` is not a size in MiB between 0 and 1024")),
    }
}

fn bucket_bytes(mb: f64) -> usize {
    (mb * 1048576.0) as usize
}

/// What `--distributed` says in a dlc built without MPI.
#[cfg(not(feature = "mpi"))]
const NO_MPI: &str = "--distributed needs dlc built with MPI: install OpenMPI (Debian: apt-get install libopenmpi-dev openmpi-bin libclang-dev), then cargo build --release --bin dlc --features mpi, and run mpirun -np N dlc train FILE --distributed";

#[cfg(not(feature = "mpi"))]
fn train_distributed(_: TrainArgs) -> Result<(), String> {
    Err(NO_MPI.into())
}

#[cfg(not(feature = "mpi"))]
fn bench_distributed(
    _: &Path,
    _: &Overrides,
    _: (usize, usize),
    _: &str,
    _: usize,
) -> Result<(), String> {
    Err(NO_MPI.into())
}

/// `mpirun -np N dlc bench FILE --distributed`: rank 0 prints one JSON line with the
/// global examples per second.
#[cfg(feature = "mpi")]
fn bench_distributed(
    file: &Path,
    ov: &Overrides,
    (steps, repeats): (usize, usize),
    engine: &str,
    bucket_bytes: usize,
) -> Result<(), String> {
    let group = crate::distributed::Group::init(bucket_bytes)?;
    let run = || -> Result<(), String> {
        let kind = EngineKind::parse(engine)?;
        let (setup, data_path) = session::compile(file, ov, kind)?;
        if setup.cfg.agent.is_some() || setup.cfg.search.is_some() {
            return Err(format!(
                "{}: dlc bench --distributed times training steps on a data set",
                file.display()
            ));
        }
        let data = session::load_data(&setup.cfg, data_path.as_deref(), None)?;
        let threads = session::threads(ov.threads);
        let t = crate::distributed::bench(
            &setup,
            &data,
            (kind, threads, ov.no_opt),
            &group,
            steps,
            repeats,
        )?;
        if group.rank == 0 {
            let mut m = Map::new();
            m.insert("model".into(), json!(file.display().to_string()));
            m.insert("ms_per_step".into(), json!(t.ms_per_step));
            m.insert("examples_per_s".into(), json!(t.examples_per_s));
            m.insert("grads_ms".into(), json!(t.grads_ms));
            m.insert("allreduce_wait_ms".into(), json!(t.wait_ms));
            m.insert("update_ms".into(), json!(t.update_ms));
            m.insert("overlap_window_ms".into(), json!(t.overlap_ms));
            m.insert("buckets".into(), json!(t.buckets));
            m.insert("batch".into(), json!(setup.cfg.batch));
            m.insert("ranks".into(), json!(group.size));
            m.insert("threads_per_rank".into(), json!(threads));
            m.insert("engine".into(), json!(kind.name()));
            say!("{}", Value::Object(m));
        }
        Ok(())
    };
    match run() {
        Ok(()) => Ok(()),
        Err(e) => {
            eprintln!("error (rank {} of {}): {e}", group.rank, group.size);
            group.abort(1)
        }
    }
}

/// `mpirun -np N dlc train FILE --distributed`: every rank compiles and loads the same
/// program and data; rank 0 prints, writes metrics and checkpoints. An error on any rank
/// ends every rank (MPI_Abort), so none waits forever in a collective.
#[cfg(feature = "mpi")]
fn train_distributed(a: TrainArgs) -> Result<(), String> {
    let group = crate::distributed::Group::init(bucket_bytes(a.bucket_mb))?;
    match train_ranks(&a, &group) {
        Ok(()) => Ok(()),
        Err(e) => {
            eprintln!("error (rank {} of {}): {e}", group.rank, group.size);
            group.abort(1)
        }
    }
}

#[cfg(feature = "mpi")]
fn train_ranks(a: &TrainArgs, group: &crate::distributed::Group) -> Result<(), String> {
    let kind = EngineKind::parse(&a.engine)?;
    let (resume, ov) = train_overrides(a)?;
    let threads = ov.threads;
    let (setup, data_path) = session::compile(&a.file, &ov, kind)?;
    crate::memory::check_fits(&setup, &a.file, None)?;
    if setup.cfg.agent.is_some() || setup.cfg.search.is_some() {
        return Err(format!(
            "{}: --distributed trains on a data set; this section trains on {}",
            a.file.display(),
            setup.cfg.data
        ));
    }
    let scaling = resume.as_ref().and_then(|(ck, _)| scaling_of(ck));
    let data = session::load_data(&setup.cfg, data_path.as_deref(), scaling.as_ref())?;
    crate::distributed::check(&setup, &data)?;
    let st = match &resume {
        Some((ck, p)) => TrainState::from_checkpoint(&setup, ck, p)?,
        None => TrainState::fresh(&setup, a.seed),
    };
    let root = group.rank == 0;
    let mut sink = MetricsSink::open(
        if root { a.metrics.as_deref() } else { None },
        kind.name(),
        setup.kernels(),
        session::args_json(&setup.cfg.data_args),
    )?;
    if root {
        say!(
            "training {} on {} ({} train / {} test examples) over {} ranks, global batch {}, {} epochs, engine {}",
            setup.model_name(),
            data.name,
            data.train.n,
            data.test.n,
            group.size,
            setup.cfg.batch,
            setup.cfg.epochs,
            kind.name()
        );
    }
    let mut save_epoch = |st: &TrainState| match &a.save {
        Some(p) => st.to_checkpoint(&setup, &data).save(p),
        None => Ok(()),
    };
    let threads = session::threads(threads);
    let mut st = crate::distributed::train(
        &setup,
        &data,
        st,
        setup.cfg.epochs,
        (kind, threads, a.no_opt),
        group,
        &mut sink,
        &mut save_epoch,
    )?;
    if root {
        // After early stopping: the best weights and their test figures (on rank 0).
        trainer::restore_best(&setup, &data, &mut st, &mut sink)?;
        if let Some(p) = &a.save {
            st.to_checkpoint(&setup, &data).save(p)?;
            say!("saved {}", p.display());
        }
    }
    Ok(())
}

//! Engines execute a graph. The reference engine runs the interpreter op by op; the JIT
//! engine (Cranelift) will slot in beside it behind the same interface.

use dlc_compiler::interp::{self, Env};
use dlc_compiler::ir::Graph;
use ndarray::ArrayD;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EngineKind {
    Reference,
}

impl EngineKind {
    pub fn name(self) -> &'static str {
        match self {
            EngineKind::Reference => "reference",
        }
    }

    /// Parse `--engine`.
    pub fn parse(s: &str) -> Result<EngineKind, String> {
        match s {
            "reference" => Ok(EngineKind::Reference),
            "jit" => Err("--engine jit: the Cranelift JIT engine is not built yet; use --engine reference (the default)".into()),
            other => Err(format!("--engine {other}: unknown engine; expected `reference` or `jit`")),
        }
    }
}

pub struct Engine {
    pub kind: EngineKind,
    graph: Graph,
    /// Kernels one run launches: for the reference engine, the ops it evaluates.
    pub kernels: usize,
}

impl Engine {
    pub fn new(kind: EngineKind, graph: Graph) -> Engine {
        let kernels = dlc_compiler::opt::fuse::kernel_count(&graph);
        Engine {
            kind,
            graph,
            kernels,
        }
    }

    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    pub fn run(&self, env: &Env<f32>, outputs: &[&str]) -> Result<Vec<ArrayD<f32>>, String> {
        match self.kind {
            EngineKind::Reference => interp::run(&self.graph, env, outputs),
        }
    }
}

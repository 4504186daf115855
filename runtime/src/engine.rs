//! Engines execute a graph: the reference interpreter op by op, or the Cranelift JIT
//! (native kernels; see `dlc_compiler::jit`).

use dlc_compiler::interp::{self, Env, Observer};
use dlc_compiler::ir::Graph;
use dlc_compiler::jit::exec::JitGraph;
use ndarray::ArrayD;
use std::cell::RefCell;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EngineKind {
    Reference,
    Jit,
}

impl EngineKind {
    pub fn name(self) -> &'static str {
        match self {
            EngineKind::Reference => "reference",
            EngineKind::Jit => "jit",
        }
    }

    /// Parse `--engine`.
    pub fn parse(s: &str) -> Result<EngineKind, String> {
        match s {
            "reference" => Ok(EngineKind::Reference),
            "jit" => Ok(EngineKind::Jit),
            other => Err(format!(
                "--engine {other}: unknown engine; expected `jit` or `reference`"
            )),
        }
    }
}

enum Exec {
    Reference(Graph),
    Jit(Box<RefCell<JitGraph>>),
}

pub struct Engine {
    pub kind: EngineKind,
    exec: Exec,
    /// Kernels one run launches.
    pub kernels: usize,
}

impl Engine {
    pub fn new(kind: EngineKind, graph: Graph, threads: usize) -> Result<Engine, String> {
        let kernels = dlc_compiler::opt::fuse::kernel_count(&graph);
        let exec = match kind {
            EngineKind::Reference => Exec::Reference(graph),
            EngineKind::Jit => Exec::Jit(Box::new(RefCell::new(JitGraph::new(graph, threads)?))),
        };
        Ok(Engine {
            kind,
            exec,
            kernels,
        })
    }

    pub fn run(&self, env: &Env<f32>, outputs: &[&str]) -> Result<Vec<ArrayD<f32>>, String> {
        match &self.exec {
            Exec::Reference(g) => interp::run(g, env, outputs),
            Exec::Jit(j) => j.borrow_mut().run(env, outputs),
        }
    }

    /// [`run`](Self::run), handing the `observed` outputs to `obs` as they are computed
    /// (the JIT: as soon as their kernel has run; the interpreter: at the end).
    pub fn run_observed(
        &self,
        env: &Env<f32>,
        outputs: &[&str],
        observed: &[&str],
        obs: &mut dyn Observer<f32>,
    ) -> Result<Vec<ArrayD<f32>>, String> {
        match &self.exec {
            Exec::Reference(g) => interp::run_observed(g, env, outputs, observed, obs),
            Exec::Jit(j) => j.borrow_mut().run_observed(env, outputs, observed, obs),
        }
    }

    /// [`run`](Self::run), giving each (output, leaf) of `donate` the leaf's buffer to
    /// write the output in place where the plan allows (the JIT's optimizer update);
    /// leaves so used leave `env`.
    pub fn run_donating(
        &self,
        env: &mut Env<f32>,
        outputs: &[&str],
        donate: &[(&str, &str)],
    ) -> Result<Vec<ArrayD<f32>>, String> {
        match &self.exec {
            Exec::Reference(g) => interp::run(g, env, outputs),
            Exec::Jit(j) => j.borrow_mut().run_donating(env, outputs, donate),
        }
    }

    /// The names of the graph's outputs.
    pub fn outputs(&self) -> Vec<String> {
        let g = match &self.exec {
            Exec::Reference(g) => g,
            Exec::Jit(j) => {
                return j
                    .borrow()
                    .graph()
                    .outputs
                    .iter()
                    .map(|(n, _)| n.clone())
                    .collect();
            }
        };
        g.outputs.iter().map(|(n, _)| n.clone()).collect()
    }

    /// Hand back a tensor the caller is done with (the JIT reuses its buffer).
    pub fn recycle(&self, a: ArrayD<f32>) {
        if let Exec::Jit(j) = &self.exec {
            j.borrow().recycle(a);
        }
    }

    /// Tensor buffers the JIT engine has allocated outside its arena so far (0 on the
    /// reference engine, which allocates every value).
    pub fn buffers_allocated(&self) -> usize {
        match &self.exec {
            Exec::Reference(_) => 0,
            Exec::Jit(j) => j.borrow().buffers_allocated(),
        }
    }

    /// The JIT's memory plan of one run of every output with these sizes (the arena of its
    /// intermediate values), made without allocating the arena; None for the reference
    /// engine, which plans no memory.
    pub fn memory_plan(
        &self,
        syms: &std::collections::HashMap<String, usize>,
    ) -> Option<Result<dlc_compiler::jit::memory::MemPlan, String>> {
        let Exec::Jit(j) = &self.exec else {
            return None;
        };
        let outputs = self.outputs();
        let refs: Vec<&str> = outputs.iter().map(|s| s.as_str()).collect();
        Some(j.borrow_mut().memory_plan(&refs, syms))
    }

    /// (native, planned) kernels of the JIT engine; None for the reference engine.
    pub fn native_kernels(&self) -> Option<(usize, usize)> {
        match &self.exec {
            Exec::Reference(_) => None,
            Exec::Jit(j) => Some(j.borrow().native_kernels()),
        }
    }
}

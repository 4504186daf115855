//! The optimizer: a flat list of named phases over the training graph.
//!
//! | phase | kind | what |
//! |---|---|---|
//! | `algebra` | egg | identities, inverses, constant folding, cheaper forms |
//! | `layout` | egg | transposes, reshapes and broadcasts that cancel or fold into matmul |
//! | `fuse` | greedy | kernels: softmax-xent, matmul epilogues, reductions, loops, update |
//!
//! Each egg phase converts the graph to an e-graph (every output a root; hash-consing
//! shares common subterms across forward and backward), runs its rule set within its
//! budget (nodes, iterations, time), extracts a DAG with the local cost model
//! (`extract.rs`), and verifies the result; if anything fails, the phase keeps its input
//! graph and says why. `DLC_DEBUG=1` prints each phase's report as it finishes.

pub mod cost;
pub mod extract;
pub mod fuse;
pub mod rules;

use crate::autodiff::lang::{EGraph, ENode, Types};
use crate::ir::Graph;
use egg::{Id, Runner, StopReason};
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

/// Limits of one egg phase. `node_limit` is checked between iterations (egg may
/// overshoot it within one); the time limit covers saturation, and extraction is
/// linear in the e-graph's size.
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    pub node_limit: usize,
    pub iter_limit: usize,
    pub time_limit: Duration,
}

pub const DEFAULT_BUDGET: Budget = Budget {
    node_limit: 50_000,
    iter_limit: 30,
    time_limit: Duration::from_millis(1500),
};

pub enum Phase {
    /// Equality saturation with a rule set, then extraction.
    Egg {
        name: &'static str,
        rules: fn() -> Vec<rules::NamedRule>,
        budget: Budget,
    },
    /// Greedy fusion into kernels.
    Fuse,
}

impl Phase {
    pub fn name(&self) -> &'static str {
        match self {
            Phase::Egg { name, .. } => name,
            Phase::Fuse => "fuse",
        }
    }
}

/// The phases, in order.
pub fn phases() -> Vec<Phase> {
    vec![
        Phase::Egg {
            name: "algebra",
            rules: rules::algebra,
            budget: DEFAULT_BUDGET,
        },
        Phase::Egg {
            name: "layout",
            rules: rules::layout,
            budget: DEFAULT_BUDGET,
        },
        Phase::Fuse,
    ]
}

/// What one phase did.
#[derive(Clone, Debug, Default)]
pub struct PhaseReport {
    pub name: String,
    pub nodes_before: usize,
    pub nodes_after: usize,
    pub egraph_nodes: usize,
    pub iterations: usize,
    pub stop_reason: String,
    pub saturation_ms: f64,
    pub extract_ms: f64,
    /// How often each rule fired, by name.
    pub fired: BTreeMap<String, usize>,
    /// Set when the phase kept its input graph, with the reason.
    pub fallback: Option<String>,
}

impl PhaseReport {
    pub fn render(&self) -> String {
        let fired: Vec<String> = self.fired.iter().map(|(k, v)| format!("{k}×{v}")).collect();
        format!(
            "phase {}: {} → {} nodes, e-graph {} nodes, {} iterations, stop: {}, {:.1} ms + {:.1} ms extract{}{}",
            self.name,
            self.nodes_before,
            self.nodes_after,
            self.egraph_nodes,
            self.iterations,
            self.stop_reason,
            self.saturation_ms,
            self.extract_ms,
            if fired.is_empty() {
                String::new()
            } else {
                format!(", fired: {}", fired.join(" "))
            },
            self.fallback
                .as_ref()
                .map(|f| format!(", FALLBACK: {f}"))
                .unwrap_or_default()
        )
    }
}

fn live_nodes(g: &Graph) -> usize {
    g.schedule().len()
}

/// The graph as an e-graph (constant folding on), with its outputs as named roots.
pub fn to_egraph(g: &Graph) -> (EGraph, Vec<(String, Id)>) {
    let mut eg = EGraph::new(Types { fold: true });
    let mut id: HashMap<_, Id> = HashMap::new();
    for n in g.schedule() {
        let args = g.inputs(n).iter().map(|i| id[i]).collect();
        id.insert(
            n,
            eg.add(ENode {
                op: g.node(n).op.clone(),
                args,
            }),
        );
    }
    let roots = g.outputs.iter().map(|(k, n)| (k.clone(), id[n])).collect();
    (eg, roots)
}

/// Saturate a graph's e-graph with a rule set within a budget.
pub fn saturate(
    g: &Graph,
    rule_set: &[rules::NamedRule],
    budget: Budget,
) -> (Runner<ENode, Types>, Vec<(String, Id)>) {
    let (eg, roots) = to_egraph(g);
    let rewrites: Vec<_> = rule_set.iter().map(|r| r.rewrite.clone()).collect();
    let runner = Runner::default()
        .with_egraph(eg)
        .with_node_limit(budget.node_limit)
        .with_iter_limit(budget.iter_limit)
        .with_time_limit(budget.time_limit)
        .run(&rewrites);
    (runner, roots)
}

/// Run one egg phase on a graph.
pub fn run_egg(
    g: &Graph,
    name: &str,
    rule_set: &[rules::NamedRule],
    budget: Budget,
) -> (Graph, PhaseReport) {
    let mut rep = PhaseReport {
        name: name.to_string(),
        nodes_before: live_nodes(g),
        ..PhaseReport::default()
    };
    let t0 = Instant::now();
    let (runner, roots) = saturate(g, rule_set, budget);
    rep.saturation_ms = t0.elapsed().as_secs_f64() * 1e3;
    rep.iterations = runner.iterations.len();
    rep.egraph_nodes = runner.egraph.total_number_of_nodes();
    rep.stop_reason = match &runner.stop_reason {
        Some(StopReason::Saturated) => "saturated".into(),
        Some(StopReason::NodeLimit(n)) => format!("node limit ({n})"),
        Some(StopReason::IterationLimit(n)) => format!("iteration limit ({n})"),
        Some(StopReason::TimeLimit(t)) => format!("time limit ({t:.2} s)"),
        Some(StopReason::Other(s)) => s.clone(),
        None => "unknown".into(),
    };
    for it in &runner.iterations {
        for (rule, n) in &it.applied {
            *rep.fired.entry(rule.to_string()).or_default() += n;
        }
    }
    let t1 = Instant::now();
    let choice = extract::Choice::new(&runner.egraph);
    let result = choice
        .build(&runner.egraph, &roots, &g.bodies)
        .and_then(|out| out.verify().map(|_| out));
    rep.extract_ms = t1.elapsed().as_secs_f64() * 1e3;
    match result {
        Ok(out) => {
            rep.nodes_after = live_nodes(&out);
            (out, rep)
        }
        Err(e) => {
            rep.fallback = Some(format!("extraction failed ({e}); keeping the input graph"));
            rep.nodes_after = rep.nodes_before;
            (g.clone(), rep)
        }
    }
}

/// The optimizer's result.
pub struct Optimized {
    pub graph: Graph,
    pub reports: Vec<PhaseReport>,
    pub kernels: usize,
}

/// Run every phase.
pub fn optimize(g: &Graph) -> Optimized {
    let debug = std::env::var_os("DLC_DEBUG").is_some_and(|v| !v.is_empty() && v != "0");
    let mut cur = g.clone();
    // Scan bodies are optimized as graphs of their own (their kernels run once per step).
    let mut done = std::collections::HashSet::new();
    for n in cur.schedule() {
        if let crate::ops::Op::Scan { body, .. } = cur.node(n).op
            && done.insert(body)
        {
            let b = optimize(&cur.bodies[body as usize]).graph;
            cur.bodies[body as usize] = b;
        }
    }
    let mut reports = Vec::new();
    for phase in phases() {
        let (next, rep) = match phase {
            Phase::Egg {
                name,
                rules,
                budget,
            } => run_egg(&cur, name, &rules(), budget),
            Phase::Fuse => {
                let t0 = Instant::now();
                let out = fuse::fuse(&cur);
                let mut rep = PhaseReport {
                    name: "fuse".into(),
                    nodes_before: live_nodes(&cur),
                    ..PhaseReport::default()
                };
                rep.stop_reason = "done".into();
                rep.saturation_ms = t0.elapsed().as_secs_f64() * 1e3;
                match out.verify() {
                    Ok(()) => {
                        rep.nodes_after = live_nodes(&out);
                        (out, rep)
                    }
                    Err(e) => {
                        rep.fallback = Some(format!(
                            "fused graph does not verify ({e}); keeping the input graph"
                        ));
                        rep.nodes_after = rep.nodes_before;
                        (cur.clone(), rep)
                    }
                }
            }
        };
        if debug {
            eprintln!("{}", rep.render());
        }
        reports.push(rep);
        cur = next;
    }
    let kernels = fuse::kernel_count(&cur);
    Optimized {
        graph: cur,
        reports,
        kernels,
    }
}

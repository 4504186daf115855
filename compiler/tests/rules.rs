//! Every simplification rule: on its sample graph the rule fires, and the graph computes
//! the same values before and after, under the reference interpreter (f64).

use dlc_compiler::interp::{Env, run};
use dlc_compiler::ir::{Graph, NodeId};
use dlc_compiler::ops::Op;
use dlc_compiler::opt::extract::Choice;
use dlc_compiler::opt::rules::{self, NamedRule};
use dlc_compiler::opt::{DEFAULT_BUDGET, saturate};
use dlc_compiler::types::{DType, shape_of};
use ndarray::{ArrayD, IxDyn};

fn sample_graph(r: &NamedRule) -> Graph {
    let mut g = Graph::new();
    let ins: Vec<NodeId> = r
        .sample_inputs
        .iter()
        .enumerate()
        .map(|(i, s)| {
            g.add_ok(
                Op::Input {
                    name: format!("in{i}"),
                    ty: (DType::F32, shape_of(s)),
                },
                &[],
            )
        })
        .collect();
    let out = (r.sample)(&mut g, &ins);
    g.set_output("out", out);
    g
}

fn env(r: &NamedRule, seed: u64) -> Env<f64> {
    let mut e = Env::new(0, 0);
    for (i, s) in r.sample_inputs.iter().enumerate() {
        let n: usize = s.iter().product();
        let vals = (0..n)
            .map(|k| ((k as f64 + 1.0) * 0.731 + seed as f64 * 1.37 + i as f64).sin() * 2.0)
            .collect();
        e.values.insert(
            format!("in{i}"),
            ArrayD::from_shape_vec(IxDyn(s), vals).expect("shape"),
        );
    }
    e
}

/// Whether the chosen terms below `kids` reach `target` (a self-referential alternative).
fn reaches(
    ch: &Choice,
    eg: &dlc_compiler::autodiff::lang::EGraph,
    kids: &[egg::Id],
    target: egg::Id,
) -> bool {
    let mut stack: Vec<egg::Id> = kids.iter().map(|k| eg.find(*k)).collect();
    let mut seen = std::collections::HashSet::new();
    while let Some(c) = stack.pop() {
        if c == target {
            return true;
        }
        if !seen.insert(c) {
            continue;
        }
        if let Some(n) = ch.chosen(c) {
            stack.extend(n.args.iter().map(|a| eg.find(*a)));
        }
    }
    false
}

fn values(g: &Graph, seed: u64, r: &NamedRule) -> Result<ArrayD<f64>, String> {
    Ok(run(g, &env(r, seed), &["v"])?.remove(0))
}

/// Apply one rule to its sample. The rule must fire, and then every e-node of every
/// e-class (every alternative the rule made equal) must compute the same values as the
/// class's default term.
fn check_rule(r: &NamedRule) -> Result<(), String> {
    let g = sample_graph(r);
    let (runner, _) = saturate(&g, std::slice::from_ref(r), DEFAULT_BUDGET);
    let fired: usize = runner
        .iterations
        .iter()
        .filter_map(|it| it.applied.get(&r.rewrite.name))
        .sum();
    if fired == 0 {
        return Err(format!("{} did not fire on its sample", r.name()));
    }
    let eg = &runner.egraph;
    let base = Choice::new(eg);
    for class in eg.classes() {
        let c = class.id;
        let expected = base.build(eg, &[("v".to_string(), c)], &[])?;
        for node in &class.nodes {
            if reaches(&base, eg, &node.args, c) {
                continue;
            }
            let mut ch = base.clone();
            ch.force(c, node.clone());
            let alt = ch.build(eg, &[("v".to_string(), c)], &[])?;
            alt.verify()?;
            for seed in 0..3 {
                let (a, b) = (values(&expected, seed, r)?, values(&alt, seed, r)?);
                if a.shape() != b.shape() {
                    return Err(format!(
                        "{}: shape {:?} vs {:?}",
                        r.name(),
                        a.shape(),
                        b.shape()
                    ));
                }
                for (x, y) in a.iter().zip(b.iter()) {
                    if (x - y).abs() > 1e-12 * x.abs().max(1.0) && !(x.is_nan() && y.is_nan()) {
                        return Err(format!(
                            "{}: `{}` gives {y} where the class computes {x}",
                            r.name(),
                            node.op.name()
                        ));
                    }
                }
            }
        }
    }
    Ok(())
}

#[test]
fn every_rule_fires_and_preserves_values() {
    let all: Vec<NamedRule> = rules::algebra()
        .into_iter()
        .chain(rules::layout())
        .collect();
    assert!(all.len() >= 20);
    for r in &all {
        check_rule(r).unwrap_or_else(|e| panic!("{e}"));
    }
}

#[test]
fn rule_names_are_unique() {
    let mut names: Vec<String> = rules::algebra()
        .iter()
        .chain(rules::layout().iter())
        .map(|r| r.name())
        .collect();
    let n = names.len();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), n);
}

/// The check catches a wrong rule (so a passing check means something).
#[test]
fn a_wrong_rule_is_caught() {
    let wrong = NamedRule {
        rewrite: egg::Rewrite::new(
            "wrong-sub-swap",
            "(sub ?a ?b)".parse::<egg::Pattern<_>>().expect("pattern"),
            "(sub ?b ?a)".parse::<egg::Pattern<_>>().expect("pattern"),
        )
        .expect("rule"),
        sample_inputs: &[&[2, 3], &[2, 3]],
        sample: |g, i| g.add_ok(Op::Sub, &[i[0], i[1]]),
    };
    let err = check_rule(&wrong).expect_err("a wrong rule must fail the check");
    assert!(err.contains("where the class computes"), "{err}");
}

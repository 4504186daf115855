//! Every model compiles; its forward IR and its gradient graph are snapshot-tested, and
//! every graph passes the verifier.

use dlc_compiler::lower::Mode;
use dlc_compiler::opt::optimize;
use dlc_compiler::print::print_graph;
use dlc_compiler::train::step_graphs;

/// Forward IR, gradient graph, and the optimized step (training step, or `forward`).
fn lower(path: &std::path::Path) -> (String, String, String) {
    // As `dlc` reads it: with the files it imports.
    let prog = dlc_runtime::session::load_program(path).unwrap_or_else(|e| panic!("{e}"));
    match prog.train_def() {
        None => {
            let l = prog.lower_predict(&[], Mode::Eval).expect("lowers");
            l.graph.verify().expect("forward graph verifies");
            let o = optimize(&l.graph);
            o.graph.verify().expect("optimized graph verifies");
            (print_graph(&l.graph), String::new(), print_graph(&o.graph))
        }
        Some(_) => {
            let sig = dlc_tests::signature(&prog);
            let (l, cfg) = prog.lower_training(&sig, Mode::Train).expect("lowers");
            l.graph.verify().expect("forward graph verifies");
            // Each objective's step (one for a single loss), under a header when several.
            let steps = step_graphs(&l, &cfg).expect("differentiates");
            let several = steps.len() > 1;
            let (mut grad, mut opt) = (String::new(), String::new());
            for (obj, tg) in &steps {
                tg.grad_graph.verify().expect("gradient graph verifies");
                tg.graph.verify().expect("training graph verifies");
                let o = optimize(&tg.graph);
                o.graph.verify().expect("optimized graph verifies");
                if several {
                    let h = format!("# objective {}\n", obj.name);
                    grad += &h;
                    opt += &h;
                }
                grad += &print_graph(&tg.grad_graph);
                opt += &print_graph(&o.graph);
            }
            (print_graph(&l.graph), grad, opt)
        }
    }
}

#[test]
fn model_graphs() {
    for path in dlc_tests::model_files() {
        let name = path
            .file_stem()
            .expect("stem")
            .to_string_lossy()
            .to_string();
        let (ir, grad, opt) = lower(&path);
        insta::assert_snapshot!(format!("{name}.ir"), ir);
        if !grad.is_empty() {
            insta::assert_snapshot!(format!("{name}.grad"), grad);
        }
        insta::assert_snapshot!(format!("{name}.opt"), opt);
    }
}

#[test]
fn printing_is_canonical() {
    // Lowering the same file twice prints byte-identical text.
    for path in dlc_tests::model_files() {
        assert_eq!(lower(&path), lower(&path), "{}", path.display());
    }
}

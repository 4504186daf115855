//! Helpers shared by the cross-crate tests.

use std::path::PathBuf;

/// The repository root (the workspace folder).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Every model file in `models/`, sorted.
pub fn model_files() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root().join("models"))
        .expect("models/ exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "dl"))
        .collect();
    v.sort();
    v
}

/// The shared data folder, if present (CI always has it).
pub fn shared_data() -> Option<PathBuf> {
    let p = std::env::var_os("DLC_SHARED_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("../shared/data"));
    p.is_dir().then_some(p)
}

/// The signature of what a program's training section trains on, without loading it. Text
/// data sets take their vocabulary from the file; for the course's corpus (`songs`) that is
/// 83 characters, windows of 100 by default. An architecture search's comes from its
/// `choices`.
pub fn signature(prog: &dlc_compiler::lower::Program) -> dlc_compiler::lower::DataSig {
    let t = prog.train_def().expect("a training section");
    let name = t.data.name.as_str();
    if name == dlc_compiler::lower::SEARCH_SOURCE {
        let (steps, options) = dlc_compiler::lower::search_space(t).expect("choices(...)");
        return dlc_runtime::datasig::architectures(steps, options);
    }
    dlc_runtime::datasig::by_name(name).unwrap_or_else(|| {
        assert_eq!(name, "songs", "unknown data set {name}");
        dlc_runtime::datasig::text("songs", Some(83), 100)
    })
}

/// A data set named `toy` for tests that lower programs without data: x f32[B, features],
/// y f32[B, 1].
pub fn toy_signature(features: usize) -> dlc_compiler::lower::DataSig {
    use dlc_compiler::types::{Dim, Type};
    dlc_compiler::lower::DataSig {
        name: "toy".into(),
        dims: vec![],
        x: Type::f32(vec![Dim::Sym("B".into()), Dim::Known(features)]),
        y: Type::f32(vec![Dim::Sym("B".into()), Dim::Known(1)]),
        experience: Vec::new(),
        sparse: Vec::new(),
    }
}

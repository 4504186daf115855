//! safetensors checkpoints through `--resume` / `--load`: the file is read, its format
//! and metadata checked, and its tensors loaded into the state of a small model (the
//! lab MLP on digits), with every shape and name checked against the model's.
#![no_main]
mod common;

use dlc_runtime::checkpoint::Checkpoint;
use dlc_runtime::engine::EngineKind;
use dlc_runtime::session::{self, Setup};
use dlc_runtime::trainer::TrainState;
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

/// The model the checkpoints are loaded into, compiled once. (`Setup` holds compiled
/// engines that are not `Sync`; libFuzzer runs inputs on one thread.)
struct Model(Setup);
unsafe impl Send for Model {}
unsafe impl Sync for Model {}

fn model() -> &'static Model {
    static MODEL: OnceLock<Model> = OnceLock::new();
    MODEL.get_or_init(|| {
        let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/mlp.dl");
        let (setup, _) = session::compile(&file, &Default::default(), EngineKind::Reference)
            .expect("the MLP compiles");
        Model(setup)
    })
}

fuzz_target!(|data: &[u8]| {
    let p = common::scratch("input.safetensors");
    common::put(&p, data);
    let Ok(ck) = Checkpoint::load(&p) else {
        return;
    };
    let _ = TrainState::from_checkpoint(&model().0, &ck, &p);
});

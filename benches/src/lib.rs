//! Shared set-up for the benchmarks: compile a model file into its training step and
//! take batches from its data set, as `dlc train` does; `gemm` measures the GEMM paths
//! against the core's FMA peak.

pub mod gemm;

use dlc_compiler::interp::Env;
use dlc_runtime::engine::EngineKind;
use dlc_runtime::session::{self, Overrides, Setup};
use dlc_runtime::trainer::{TrainState, batch};
use std::path::Path;

/// A compiled training step with one batch of real data in memory.
pub struct Step {
    pub setup: Setup,
    pub env: Env<f32>,
    pub outputs: Vec<String>,
}

/// The training step of `models/NAME.dl` on its default data at the given batch size.
pub fn step(model: &str, batch_size: usize, engine: EngineKind) -> Step {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("root");
    let ov = Overrides {
        batch: Some(batch_size),
        threads: 1,
        ..Overrides::default()
    };
    let (setup, path) = session::compile(
        &root.join("models").join(format!("{model}.dl")),
        &ov,
        engine,
    )
    .expect("compiles");
    let data = session::load_data(&setup.cfg, path.as_deref(), None).expect("data");
    let st = TrainState::fresh(&setup, 0);
    let rows: Vec<usize> = (0..batch_size.min(data.train.n)).collect();
    let (x, y) = batch(&data.train, &rows, &data.x_shape, &data.y_shape);
    let mut env = Env::new(0, 0);
    env.values.extend(st.params.clone());
    env.values.extend(st.opt.clone());
    env.values.insert("x".into(), x);
    env.values.insert("y".into(), y);
    env.values.insert(
        "step".into(),
        ndarray::ArrayD::from_elem(ndarray::IxDyn(&[]), 1.0),
    );
    let mut outputs = vec!["loss".to_string(), "pred".to_string()];
    outputs.extend(st.params.keys().map(|p| format!("new:{p}")));
    outputs.extend(st.opt.keys().map(|s| format!("new:{s}")));
    Step {
        setup,
        env,
        outputs,
    }
}

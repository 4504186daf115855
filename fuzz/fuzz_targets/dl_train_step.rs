//! `.dl` source through compiling the training step (gradients, optimizer update, egg
//! optimization, JIT plan and Cranelift code) and running one step of it on two rows of
//! the embedded digits, when the file trains on them.
#![no_main]
mod common;

use dlc_runtime::engine::EngineKind;
use dlc_runtime::session::{self, Overrides};
use dlc_runtime::trainer::{self, RunLimits, TrainState};
use libfuzzer_sys::fuzz_target;

/// Parameters, optimizer state and a step's intermediate values beyond this are not
/// trained here (libFuzzer's memory limit is 4 GB; `dlc train` itself refuses only what
/// cannot fit).
const MAX_BYTES: u128 = 64 << 20;

fuzz_target!(|data: &[u8]| {
    let path = common::scratch("input.dl");
    common::put(&path, data);
    let ov = Overrides {
        batch: Some(2),
        threads: 1,
        ..Default::default()
    };
    let Ok((setup, None)) = session::compile(&path, &ov, EngineKind::Jit) else {
        return;
    };
    if setup.cfg.data != "digits" || setup.cfg.agent.is_some() || setup.cfg.search.is_some() {
        return;
    }
    let need: u128 = dlc_runtime::memory::training_needs(&setup)
        .iter()
        .map(|(_, b)| *b)
        .fold(0, u128::saturating_add)
        .saturating_add(dlc_runtime::memory::step_arena(&setup, 2).unwrap_or(0));
    if need > MAX_BYTES {
        return;
    }
    let Ok(data) = session::load_data(&setup.cfg, None, None) else {
        return;
    };
    let limits = RunLimits {
        epochs: 1,
        steps: Some(1),
        stall_at_step: None,
        quiet: true,
        check_numerics: false,
    };
    let Ok(mut sink) = dlc_runtime::metrics::MetricsSink::open(None, "jit", 0, Default::default())
    else {
        return;
    };
    let st = TrainState::fresh(&setup, 0);
    let _ = trainer::train(&setup, &data, st, &limits, &mut sink, &mut |_| Ok(()));
});

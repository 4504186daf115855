//! Whole training steps (forward, backward, Adam update) of the digits MLP, on the JIT
//! and on the reference engine, at two batch sizes.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use dlc_runtime::engine::EngineKind;
use std::hint::black_box;

fn train_step(c: &mut Criterion) {
    let mut group = c.benchmark_group("mlp_digits_train_step");
    for engine in [EngineKind::Jit, EngineKind::Reference] {
        for batch in [64usize, 256] {
            let s = dlc_benches::step("mlp", batch, engine);
            let outs: Vec<&str> = s.outputs.iter().map(|o| o.as_str()).collect();
            group.throughput(Throughput::Elements(batch as u64));
            group.bench_function(format!("{}_batch{batch}", engine.name()), |b| {
                b.iter(|| black_box(s.setup.train_engine.run(&s.env, &outs).expect("runs")))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, train_step);
criterion_main!(benches);

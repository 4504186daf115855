//! The GEMM paths against the core's FMA peak: measures the clock (a chain of dependent
//! integer adds) and the FMA throughput, then times C = A·B at 512³ on one thread through
//! both paths (best of N runs) and prints GFLOP/s and the fractions of the 128-bit and
//! 512-bit FMA peaks, and the path `choose(512, 512, 512)` picks.
//!
//!   cargo run --release -p dlc-benches --bin gemm_peak [N]   (N: runs per path, default 50)

use dlc_benches::gemm::{
    FMA_PIPES, Operands, Peaks, core_clock_ghz, fma_per_cycle, load_average, min_ns,
};
use dlc_compiler::jit::sgemm::{self, GemmPath};
use std::time::Duration;

fn main() {
    let runs: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse().expect("runs: a number"))
        .unwrap_or(50);
    println!(
        "load average (1, 5, 15 min): {}",
        load_average().unwrap_or_else(|| "unknown".into())
    );
    let Some(p) = Peaks::measure() else {
        eprintln!("the clock measurement needs x86-64");
        std::process::exit(1);
    };
    println!(
        "core clock: {:.3} GHz (2^24 dependent 64-bit adds at 1 cycle each, fastest of 100 \
         runs)",
        p.ghz
    );
    println!(
        "nominal FMA peak ({FMA_PIPES} FMAs/cycle at every width): {:.1} GFLOP/s at 128 bits \
         (x 4 lanes x 2), {:.1} GFLOP/s at 512 bits (x 16 lanes x 2)",
        p.nominal_128, p.nominal_512
    );
    println!(
        "measured FMA throughput: {:.2}/cycle at 128 bits = {:.1} GFLOP/s, {:.2}/cycle at \
         512 bits = {:.1} GFLOP/s",
        p.fmas_128, p.measured_128, p.fmas_512, p.measured_512
    );
    if let Some(f) = fma_per_cycle(256, p.ghz, 20) {
        println!(
            "measured FMA throughput at 256 bits: {f:.2}/cycle = {:.1} GFLOP/s",
            f * p.ghz * 16.0
        );
    }
    let (m, n, k) = (512, 512, 512);
    let mut o = Operands::new(m, n, k);
    for path in [GemmPath::Jit, GemmPath::Crate] {
        let ns = min_ns(|| o.run(path), runs, runs, Duration::ZERO);
        let gf = o.flops() / ns;
        println!(
            "{m}x{n}x{k} {path:>5}: {:.3} ms, {gf:.1} GFLOP/s = {} (best of {runs})",
            ns / 1e6,
            p.fractions(gf)
        );
    }
    // The clock again: a boost clock that moved during the runs shows here.
    if let Some(after) = core_clock_ghz(100) {
        println!("core clock after the runs: {after:.3} GHz");
    }
    println!("choose({m}, {n}, {k}) = {}", sgemm::choose(m, n, k));
}

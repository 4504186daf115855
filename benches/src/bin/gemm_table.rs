//! Measures the cost table `compiler/src/jit/gemm_costs.tsv` that `sgemm::choose` reads:
//! both GEMM paths on one thread over a grid of shapes (m × n × k), the fastest of
//! repeated runs of each in thread CPU time (`gemm::min_ns`: at least 3 samples per path
//! in each of two interleaved rounds, and more until 15 ms per round have passed). Run it
//! on an idle machine and commit the result; the choice at run time never times anything.
//!
//!   cargo run --release -p dlc-benches --bin gemm_table [OUT]
//!   (OUT defaults to compiler/src/jit/gemm_costs.tsv)

use dlc_benches::gemm::{Operands, core_clock_ghz, load_average, min_ns};
use dlc_compiler::jit::sgemm::GemmPath;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Rows of the products (batch sizes and the larger row counts of convolutions).
pub const MS: [usize; 8] = [1, 8, 32, 64, 128, 256, 512, 1024];
/// Columns and depths (layer widths of the model catalogue, 784 = 28²).
pub const NKS: [usize; 8] = [10, 32, 64, 128, 256, 512, 784, 1024];

fn main() {
    let out = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../compiler/src/jit/gemm_costs.tsv")
        });
    let load = load_average().unwrap_or_else(|| "unknown".into());
    let ghz = core_clock_ghz(100).unwrap_or(f64::NAN);
    eprintln!("load average {load}, core clock {ghz:.2} GHz");
    let start = Instant::now();
    let mut text = String::new();
    writeln!(
        text,
        "# GEMM cost table for sgemm::choose: ns per C = A·B on one thread, fastest of \
         repeated runs (thread CPU time).\n# Made by `cargo run --release -p dlc-benches --bin gemm_table` \
         (load average {load}, core clock {ghz:.2} GHz).\nm\tn\tk\tjit_ns\tcrate_ns"
    )
    .expect("string");
    let (mut jit_wins, mut rows) = (0, 0);
    for m in MS {
        for n in NKS {
            for k in NKS {
                let mut o = Operands::new(m, n, k);
                let budget = Duration::from_millis(30);
                // Interleave the paths' runs in halves, so a disturbance hits both alike.
                let mut t = [f64::INFINITY; 2];
                for _ in 0..2 {
                    for (i, path) in [GemmPath::Jit, GemmPath::Crate].into_iter().enumerate() {
                        t[i] = t[i].min(min_ns(|| o.run(path), 3, 100_000, budget / 2));
                    }
                }
                writeln!(text, "{m}\t{n}\t{k}\t{:.0}\t{:.0}", t[0], t[1]).expect("string");
                rows += 1;
                jit_wins += (t[0] < t[1]) as usize;
            }
        }
        eprintln!("m = {m} done after {:.0?}", start.elapsed());
    }
    std::fs::write(&out, text).unwrap_or_else(|e| panic!("{}: {e}", out.display()));
    eprintln!(
        "{rows} shapes, the JIT path cheaper on {jit_wins}; wrote {} in {:.0?}",
        out.display(),
        start.elapsed()
    );
}

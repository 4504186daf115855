//! Sweeps the JIT GEMM's micro-kernel shapes (MR×NR, k unroll) and cache blocking at
//! 512³ on one thread, printing GFLOP/s (best of several runs) for each; the defaults in
//! `compiler/src/jit/sgemm.rs` come from this.
//!
//!   cargo run --release -p dlc-benches --bin gemm_tune [kernels|blocking|all]

use dlc_benches::gemm::{Operands, load_average, min_ns};
use dlc_compiler::jit::sgemm::{BLOCKING, Blocking, KERNEL, Kernel, Sgemm};
use std::time::Duration;

fn gflops(s: &Sgemm, blk: Blocking, o: &mut Operands) -> f64 {
    let (m, n, k) = (o.m, o.n, o.k);
    let flops = o.flops();
    let ns = min_ns(
        || {
            // SAFETY: row-major m×k, k×n, m×n buffers that do not overlap.
            unsafe {
                s.matmul_blocked(
                    blk,
                    m,
                    n,
                    k,
                    o.a.as_ptr(),
                    k as isize,
                    1,
                    o.b.as_ptr(),
                    n as isize,
                    1,
                    o.c.as_mut_ptr(),
                    n as isize,
                )
            }
        },
        10,
        200,
        Duration::from_millis(400),
    );
    flops / ns
}

/// A 64-byte aligned buffer of pseudo-random floats.
struct Panel(Vec<Line>);

#[repr(C, align(64))]
struct Line([f32; 16]);

impl Panel {
    fn new(len: usize) -> Panel {
        let v = dlc_benches::gemm::values(len.div_ceil(16) * 16, 3);
        Panel(
            v.chunks(16)
                .map(|c| Line(c.try_into().expect("16")))
                .collect(),
        )
    }
    fn ptr(&self) -> *const f32 {
        self.0.as_ptr() as *const f32
    }
}

/// `MRxNR uU` and the options that differ from the default kernel.
fn label(kc: Kernel) -> String {
    let mut l = format!("{}x{} u{}", kc.mr, kc.nr, kc.unroll);
    if kc.split_broadcasts {
        l += " split-broadcasts";
    }
    if !kc.optimize {
        l += " opt_level=none";
    }
    if !kc.readonly_loads {
        l += " plain-loads";
    }
    l
}

/// GFLOP/s of the micro-kernel alone: 1000 calls with k = 256 on L1-resident panels.
fn micro(kc: Kernel) -> f64 {
    let s = Sgemm::with_kernel(kc).expect("compiles");
    let k = 256;
    let a = Panel::new(s.a_panel_len(k));
    let b = Panel::new(kc.nr * k);
    let mut c = vec![0.0f32; kc.mr * kc.nr];
    let ns = min_ns(
        || {
            for _ in 0..1000 {
                // SAFETY: panels of the sizes the kernel reads; C is mr×nr.
                unsafe { s.tile_product(k, a.ptr(), b.ptr(), c.as_mut_ptr(), kc.nr, true) }
            }
        },
        5,
        100,
        Duration::from_millis(200),
    );
    (2 * kc.mr * kc.nr * k * 1000) as f64 / ns
}

fn main() {
    let what = std::env::args().nth(1).unwrap_or_else(|| "all".into());
    println!("load average: {}", load_average().unwrap_or_default());
    let mut o = Operands::new(512, 512, 512);
    if let Some(shape) = what.strip_prefix("asm") {
        // e.g. asm6x8u4s1o0 (s1: split broadcasts, o0: optimizer off)
        let v: Vec<usize> = shape
            .split(['x', 'u', 's', 'o'])
            .map(|x| x.parse().expect("asmMRxNRuUNROLLsSPLIToOPT"))
            .collect();
        let s = Sgemm::with_kernel(Kernel {
            mr: v[0],
            nr: v[1],
            unroll: v[2],
            split_broadcasts: v[3] != 0,
            optimize: v[4] != 0,
            readonly_loads: true,
        })
        .expect("compiles");
        println!("{}\n{}", s.clif(), s.asm());
        return;
    }
    if what == "micro" || what == "all" {
        // The micro-kernel alone on L1-resident panels (k = 256).
        let mut kernels = Vec::new();
        for (mr, nr) in [(6, 8), (12, 4), (4, 12), (3, 16), (8, 4)] {
            for unroll in [1, 2, 4] {
                for split in [false, true] {
                    if !(split && nr == 4) {
                        kernels.push(Kernel {
                            mr,
                            nr,
                            unroll,
                            split_broadcasts: split,
                            ..KERNEL
                        });
                    }
                }
            }
        }
        kernels.push(Kernel {
            readonly_loads: false,
            ..KERNEL
        });
        kernels.push(Kernel {
            optimize: false,
            ..KERNEL
        });
        for kc in kernels {
            println!("micro {}: {:.1} GFLOP/s", label(kc), micro(kc));
        }
    }
    if what == "kernels" || what == "all" {
        // Whole products at 512³ with the default blocking.
        for (mr, nr) in [(6, 8), (12, 4), (4, 12), (3, 16), (8, 4)] {
            for unroll in [1, 2, 4] {
                for split in [false, true] {
                    if split && nr == 4 {
                        continue;
                    }
                    let kc = Kernel {
                        mr,
                        nr,
                        unroll,
                        split_broadcasts: split,
                        ..KERNEL
                    };
                    let s = Sgemm::with_kernel(kc).expect("compiles");
                    println!(
                        "512³ {}: {:.1} GFLOP/s",
                        label(kc),
                        gflops(&s, BLOCKING, &mut o)
                    );
                }
            }
        }
    }
    if what == "blocking" || what == "all" {
        let s = Sgemm::with_kernel(KERNEL).expect("compiles");
        for kc in [128, 192, 256, 384, 512] {
            for mc in [48, 72, 96, 144, 192, 288, 516] {
                for nc in [256, 512, 4096] {
                    let blk = Blocking { mc, kc, nc };
                    println!(
                        "mc {mc} kc {kc} nc {nc}: {:.1} GFLOP/s",
                        gflops(&s, blk, &mut o)
                    );
                }
            }
        }
    }
}

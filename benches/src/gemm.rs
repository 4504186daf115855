//! Measuring the GEMM paths: the core clock, the FMA peaks it implies, and single-threaded
//! timings of `dlc_compiler::jit::sgemm::matmul` (used by the `gemm_peak` and
//! `gemm_table` binaries and the `kernels` bench).
//!
//! Times are the calling thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`), not wall time: on a
//! shared machine a run that is preempted would otherwise count the other process's time
//! slice. The fastest of many runs is kept, which also drops runs slowed by a neighbour's
//! cache traffic.

use dlc_compiler::jit::sgemm::{self, GemmPath};
use std::hint::black_box;
use std::time::{Duration, Instant};

/// FMA pipes per core that the nominal peaks assume: two, each 512 bits wide (Zen 5, as
/// DESIGN §6 has it). Zen 4 has two 256-bit pipes and runs a 512-bit FMA through both
/// (one per cycle); [`Peaks`] measures what the machine sustains.
pub const FMA_PIPES: f64 = 2.0;

/// CPU time of the calling thread, in nanoseconds.
pub fn thread_cpu_ns() -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a valid timespec to write; the clock id is a constant of the platform.
    let r = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    assert_eq!(r, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// CPU time of one call of `f`, in nanoseconds.
pub fn cpu_ns(f: impl FnOnce()) -> u64 {
    let t = thread_cpu_ns();
    f();
    thread_cpu_ns() - t
}

/// Runs `iters` iterations of 32 dependent 64-bit `add`s (one cycle of latency each, so
/// 32 cycles per iteration; the loop counter runs beside the chain).
#[cfg(target_arch = "x86_64")]
fn add_chain(iters: u64) {
    let mut x: u64 = 0;
    let mut n = iters;
    // SAFETY: register arithmetic only.
    unsafe {
        std::arch::asm!(
            "2:",
            ".rept 32",
            "add {x}, 1",
            ".endr",
            "dec {n}",
            "jnz 2b",
            x = inout(reg) x,
            n = inout(reg) n,
            options(nomem, nostack),
        );
    }
    black_box((x, n));
}

/// Cycles of one clock measurement run.
pub const CLOCK_RUN_CYCLES: u64 = 1 << 24;

/// The core clock in GHz while this thread runs: the time of a chain of 2^24 dependent
/// integer `add`s (1 cycle each, ~4 ms), the fastest of `runs` runs after a warm-up of
/// ~0.2 s, so it reflects the boost clock the core holds under a one-thread load. Short
/// runs, many of them: on a shared machine some run without being preempted. `None` off
/// x86-64.
pub fn core_clock_ghz(runs: usize) -> Option<f64> {
    #[cfg(target_arch = "x86_64")]
    {
        const ITERS: u64 = CLOCK_RUN_CYCLES / 32;
        add_chain(ITERS * 50);
        let best = (0..runs.max(1))
            .map(|_| cpu_ns(|| add_chain(ITERS)))
            .min()
            .expect("one run");
        Some((ITERS * 32) as f64 / best as f64)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = runs;
        None
    }
}

/// `iters` iterations of 12 independent `vfmadd231ps` at `bits` width (128, 256 or 512;
/// enough independent chains to cover the FMA latency on two pipes).
#[cfg(target_arch = "x86_64")]
fn fma_loop(bits: u32, iters: u64) {
    macro_rules! fmas {
        ($r:literal) => {
            // SAFETY: register arithmetic only; every vector register is declared clobbered
            // (all are caller-saved in the C ABI), and the caller checked the CPU features.
            unsafe {
                std::arch::asm!(
                    concat!("vxorps ", $r, "0, ", $r, "0, ", $r, "0"),
                    concat!("vxorps ", $r, "14, ", $r, "14, ", $r, "14"),
                    concat!("vxorps ", $r, "15, ", $r, "15, ", $r, "15"),
                    "2:",
                    concat!("vfmadd231ps ", $r, "0, ", $r, "14, ", $r, "15"),
                    concat!("vfmadd231ps ", $r, "1, ", $r, "14, ", $r, "15"),
                    concat!("vfmadd231ps ", $r, "2, ", $r, "14, ", $r, "15"),
                    concat!("vfmadd231ps ", $r, "3, ", $r, "14, ", $r, "15"),
                    concat!("vfmadd231ps ", $r, "4, ", $r, "14, ", $r, "15"),
                    concat!("vfmadd231ps ", $r, "5, ", $r, "14, ", $r, "15"),
                    concat!("vfmadd231ps ", $r, "6, ", $r, "14, ", $r, "15"),
                    concat!("vfmadd231ps ", $r, "7, ", $r, "14, ", $r, "15"),
                    concat!("vfmadd231ps ", $r, "8, ", $r, "14, ", $r, "15"),
                    concat!("vfmadd231ps ", $r, "9, ", $r, "14, ", $r, "15"),
                    concat!("vfmadd231ps ", $r, "10, ", $r, "14, ", $r, "15"),
                    concat!("vfmadd231ps ", $r, "11, ", $r, "14, ", $r, "15"),
                    "dec rcx",
                    "jnz 2b",
                    inout("rcx") iters => _,
                    clobber_abi("C"),
                    options(nomem, nostack),
                )
            }
        };
    }
    match bits {
        128 => fmas!("xmm"),
        256 => fmas!("ymm"),
        512 => fmas!("zmm"),
        _ => panic!("vector width {bits}"),
    }
}

/// FMA instructions per cycle one core sustains at `bits`-wide f32 vectors, given the clock
/// in GHz: independent `vfmadd231ps` in a loop (12·2^20 of them, fastest of `runs` runs).
/// `None` off x86-64 or where the CPU lacks the width (FMA for 128/256, AVX-512F for 512).
pub fn fma_per_cycle(bits: u32, ghz: f64, runs: usize) -> Option<f64> {
    #[cfg(target_arch = "x86_64")]
    {
        let ok = std::arch::is_x86_feature_detected!("fma")
            && (bits != 512 || std::arch::is_x86_feature_detected!("avx512f"));
        if !ok {
            return None;
        }
        const ITERS: u64 = 1 << 20; // × 12 FMAs
        fma_loop(bits, ITERS * 10);
        let best = (0..runs.max(1))
            .map(|_| cpu_ns(|| fma_loop(bits, ITERS)))
            .min()
            .expect("one run");
        Some((ITERS * 12) as f64 / (best as f64 * ghz))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (bits, ghz, runs);
        None
    }
}

/// FMA peak of one core in GFLOP/s at `bits`-wide f32 vectors, issuing `fmas_per_cycle`
/// FMAs per cycle: clock × FMAs per cycle × lanes × 2 flops per FMA.
pub fn fma_peak_gflops(ghz: f64, bits: u32, fmas_per_cycle: f64) -> f64 {
    ghz * fmas_per_cycle * (bits / 32) as f64 * 2.0
}

/// The core's clock and FMA peaks (GFLOP/s, f32, one core).
#[derive(Clone, Copy, Debug)]
pub struct Peaks {
    /// Measured clock (GHz), see [`core_clock_ghz`].
    pub ghz: f64,
    /// Nominal peaks: clock × [`FMA_PIPES`] × lanes × 2, at 128 and 512 bits.
    pub nominal_128: f64,
    pub nominal_512: f64,
    /// Measured FMAs per cycle at 128 and 512 bits ([`fma_per_cycle`]; NaN if the CPU
    /// lacks the width) and the peaks they give.
    pub fmas_128: f64,
    pub fmas_512: f64,
    pub measured_128: f64,
    pub measured_512: f64,
}

impl Peaks {
    /// Measures the clock and the FMA throughput (about one second). `None` off x86-64.
    pub fn measure() -> Option<Peaks> {
        let ghz = core_clock_ghz(100)?;
        let f128 = fma_per_cycle(128, ghz, 20).unwrap_or(f64::NAN);
        let f512 = fma_per_cycle(512, ghz, 20).unwrap_or(f64::NAN);
        Some(Peaks {
            ghz,
            nominal_128: fma_peak_gflops(ghz, 128, FMA_PIPES),
            nominal_512: fma_peak_gflops(ghz, 512, FMA_PIPES),
            fmas_128: f128,
            fmas_512: f512,
            measured_128: fma_peak_gflops(ghz, 128, f128),
            measured_512: fma_peak_gflops(ghz, 512, f512),
        })
    }

    /// One line: `gflops` as fractions of the four peaks.
    pub fn fractions(&self, gflops: f64) -> String {
        format!(
            "{:.1}% / {:.1}% of the nominal 128/512-bit peaks, {:.1}% / {:.1}% of the \
             measured ones",
            100.0 * gflops / self.nominal_128,
            100.0 * gflops / self.nominal_512,
            100.0 * gflops / self.measured_128,
            100.0 * gflops / self.measured_512
        )
    }
}

impl std::fmt::Display for Peaks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "clock {:.3} GHz; nominal FMA peaks ({} FMAs/cycle) {:.1} GFLOP/s at 128 bits, \
             {:.1} at 512 bits; measured {:.2} FMAs/cycle at 128 bits ({:.1} GFLOP/s), \
             {:.2} at 512 bits ({:.1} GFLOP/s)",
            self.ghz,
            FMA_PIPES,
            self.nominal_128,
            self.nominal_512,
            self.fmas_128,
            self.measured_128,
            self.fmas_512,
            self.measured_512
        )
    }
}

/// Operands of an (m×k)·(k×n) product in row-major storage, values in [-1, 1).
pub struct Operands {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub a: Vec<f32>,
    pub b: Vec<f32>,
    pub c: Vec<f32>,
}

/// Pseudo-random values in [-1, 1) (xorshift64*, deterministic).
pub fn values(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            s ^= s >> 12;
            s ^= s << 25;
            s ^= s >> 27;
            let r = s.wrapping_mul(0x2545_f491_4f6c_dd1d);
            ((r >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

impl Operands {
    pub fn new(m: usize, n: usize, k: usize) -> Operands {
        Operands {
            m,
            n,
            k,
            a: values(m * k, 1),
            b: values(k * n, 2),
            c: vec![0.0; m * n],
        }
    }

    /// One C = A·B through `path` (no transposes).
    pub fn run(&mut self, path: GemmPath) {
        let (m, n, k) = (self.m, self.n, self.k);
        // SAFETY: the buffers hold m×k, k×n and m×n floats, row-major, and do not overlap.
        unsafe {
            sgemm::matmul(
                path,
                m,
                n,
                k,
                self.a.as_ptr(),
                k as isize,
                1,
                self.b.as_ptr(),
                n as isize,
                1,
                self.c.as_mut_ptr(),
                n as isize,
            )
        };
        black_box(&mut self.c);
    }

    /// Flops of one product (2mnk).
    pub fn flops(&self) -> f64 {
        2.0 * (self.m * self.n * self.k) as f64
    }
}

/// The fastest of repeated runs of `f`, in nanoseconds of thread CPU time: after one
/// warm-up run, at least `min_runs` samples and until `budget` of wall time has passed (at
/// most `max_runs`). A sample times a batch of runs lasting about 50 µs, so that reading
/// the CPU clock (a system call, ~0.3 µs) does not count in the time of a small product.
pub fn min_ns(mut f: impl FnMut(), min_runs: usize, max_runs: usize, budget: Duration) -> f64 {
    let t = Instant::now();
    f();
    let once = t.elapsed().as_nanos().max(1) as u64;
    let batch = (50_000 / once).clamp(1, 10_000);
    let start = Instant::now();
    let mut best = u64::MAX;
    let mut runs = 0;
    while runs < min_runs || (runs < max_runs && start.elapsed() < budget) {
        best = best.min(cpu_ns(|| {
            for _ in 0..batch {
                f();
            }
        }));
        runs += 1;
    }
    best as f64 / batch as f64
}

/// The 1-, 5- and 15-minute load averages (Linux), to report how idle the machine was.
pub fn load_average() -> Option<String> {
    let s = std::fs::read_to_string("/proc/loadavg").ok()?;
    Some(s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
}

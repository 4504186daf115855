//! The Cranelift JIT: native code for fused kernels.
//!
//! - `loops.rs` compiles elementwise kernel bodies (loop fusion, the optimizer update,
//!   matmul epilogues) into one native function each;
//! - `rows.rs` compiles bodies with reductions along or across the rows of `[B, C]` values
//!   (softmax cross-entropy and its gradient, bias gradients) into one native function;
//! - `math.rs` emits `exp`, `log`, `tanh` and `sigmoid` inline, as straight-line
//!   polynomial code for F32 and F32X4 values;
//! - `exec.rs` runs an optimized graph: loop and row kernels natively, matmuls through
//!   `sgemm.rs` followed by their JIT epilogue, other reductions staged around
//!   native loops, convolution and pooling through `conv.rs` and data movement through
//!   `copy.rs`;
//!   `plan.rs` decides how each kernel runs (and prints `--emit plan`), `buffers.rs`
//!   where values live (the arena laid out by `memory.rs`, the buffer pool, in-place
//!   outputs);
//! - `sgemm.rs` is the GEMM core: the JIT's own F32X4 micro-kernel and the `gemm` crate
//!   behind one `matmul` interface, with the path per shape chosen from a committed,
//!   measured cost table; `packed.rs` multiplies by a right operand packed once, the
//!   weights a scan's steps share.
//!
//! A `Jit` owns its `JITModule`: Cranelift cannot free single functions, so a compiled
//! model drops its module whole.

pub mod buffers;
pub mod conv;
pub mod copy;
pub mod emit;
pub mod exec;
pub mod loops;
pub mod math;
pub mod memory;
pub mod packed;
pub mod plan;
pub mod reduce;
pub mod rows;
pub mod sgemm;

use cranelift_codegen::settings::{self, Configurable};
use cranelift_frontend::FunctionBuilderContext;
use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::{Module, default_libcall_names};

/// `x^y`, which the loops call lane by lane (the other math is inline: `math.rs`).
extern "C" fn dlc_powf(x: f32, y: f32) -> f32 {
    x.powf(y)
}

/// A standard normal from an element's 64 random bits, as `rng::normal` computes it (the
/// loops hash, this finishes Box–Muller in f64, so both engines draw the same numbers).
extern "C" fn dlc_normal(h: u64) -> f32 {
    crate::rng::normal_of_bits(h) as f32
}

pub struct Jit {
    pub(crate) module: JITModule,
    pub(crate) ctx: cranelift_codegen::Context,
    pub(crate) fctx: FunctionBuilderContext,
    pub(crate) next_id: u32,
    /// The CLIF text of every compiled function (for `--emit clif`).
    pub clif: Vec<(String, String)>,
}

impl Jit {
    pub fn new() -> Result<Jit, String> {
        Jit::with_opt_level("speed")
    }

    /// A JIT whose functions Cranelift compiles at `opt_level` ("none", "speed", …).
    pub(crate) fn with_opt_level(opt_level: &str) -> Result<Jit, String> {
        let mut flags = settings::builder();
        let set = |f: &mut settings::Builder, k: &str, v: &str| {
            f.set(k, v).map_err(|e| format!("cranelift flag {k}: {e}"))
        };
        set(&mut flags, "opt_level", opt_level)?;
        set(&mut flags, "use_colocated_libcalls", "false")?;
        set(&mut flags, "is_pic", "false")?;
        let isa = cranelift_native::builder()
            .map_err(|e| format!("this machine is not supported by Cranelift: {e}"))?
            .finish(settings::Flags::new(flags))
            .map_err(|e| format!("cranelift: {e}"))?;
        let mut builder = JITBuilder::with_isa(isa, default_libcall_names());
        builder.symbol("dlc_powf", dlc_powf as *const u8);
        builder.symbol("dlc_normal", dlc_normal as *const u8);
        let module = JITModule::new(builder);
        let ctx = module.make_context();
        Ok(Jit {
            module,
            ctx,
            fctx: FunctionBuilderContext::new(),
            next_id: 0,
            clif: Vec::new(),
        })
    }
}

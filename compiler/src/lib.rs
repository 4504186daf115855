//! dlc's compiler: the IR and its op table, lowering from the `.dl` AST, autodiff with
//! egg, the training graph (forward + backward + optimizer update) and the reference
//! interpreter that serves as the test oracle.
//!
//! Modules in pipeline order: `types` → `ops` → `ir` → `lower` → `autodiff` → `train`
//! → `interp`; `print` renders any stage.

pub mod autodiff;
pub mod interp;
pub mod ir;
pub mod jit;
pub mod lower;
pub mod ops;
pub mod opt;
pub mod print;
pub mod rng;
pub mod scan;
pub mod sparse;
pub mod train;
pub mod types;
pub mod window;

//! `.dl` source through `dlc check`: parsing, name resolution, lowering with types and
//! shapes. Any input must give Ok or an error message, never a panic.
#![no_main]
mod common;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = common::scratch("input.dl");
    common::put(&path, data);
    let _ = dlc_runtime::cli::check_program(&path, &Default::default());
});

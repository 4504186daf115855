//! Text corpora through `--data songs=FILE` (tunes separated by blank lines, cut into
//! windows of `seq` + 1 characters): the first byte picks `seq` (1 to 32) and whether a
//! validation split is carved out.
#![no_main]
mod common;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let p = common::scratch("songs.abc");
    common::put(&p, rest);
    let seq = (usize::from(pick % 32) + 1).to_string();
    let args = [("seq".to_string(), seq)];
    let _ = dlc_data::load_with_args("songs", Some(&p), pick & 32 != 0, None, &args);
    let _ = dlc_data::songs_vocabulary(&p);
});

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = dlc_runtime::cli::Cli::parse();
    // Everything runs on a worker of the thread pool that splits kernels, so a split
    // kernel runs its first part in place and hands the others over without a round trip
    // through a sleeping caller. Deeply nested models lower and print by recursion: the
    // workers get room for it.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(cores)
        .stack_size(256 << 20)
        .build();
    let result = match pool {
        Ok(pool) => pool.install(|| {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| dlc_runtime::cli::run(cli)))
                .unwrap_or_else(|_| {
                    Err("internal error: the compiler panicked (please report this)".into())
                })
        }),
        Err(e) => Err(format!("cannot start the worker threads: {e}")),
    };
    match result {
        Ok(dlc_runtime::cli::Exit::Done) => ExitCode::SUCCESS,
        Ok(dlc_runtime::cli::Exit::Interrupted) => ExitCode::from(130),
        Err(msg) => {
            if msg.contains(": error: ") {
                eprintln!("{msg}");
            } else {
                eprintln!("error: {msg}");
            }
            ExitCode::FAILURE
        }
    }
}

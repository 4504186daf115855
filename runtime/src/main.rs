use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = dlc_runtime::cli::Cli::parse();
    // Deeply nested models lower and print by recursion; give it room.
    let child = std::thread::Builder::new()
        .stack_size(256 << 20)
        .spawn(move || dlc_runtime::cli::run(cli));
    let result = match child {
        Ok(h) => h.join().unwrap_or_else(|_| {
            Err("internal error: the compiler panicked (please report this)".into())
        }),
        Err(e) => Err(format!("cannot start the worker thread: {e}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
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

//! Runs the kernels' GPU self-test and prints its JSON report (a stand-in for the worker's
//! `gpu-selftest kernels` until that subcommand exists).
//! `cargo run -p tokenfleet-kernels --features cuda --example gpu-selftest [-- ORDINAL]`.

fn main() -> std::process::ExitCode {
    let ordinal = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(0);
    match tokenfleet_kernels::selftest::run_all(ordinal) {
        Ok(report) => {
            let json = report.to_json();
            #[allow(clippy::print_stdout)]
            {
                println!("{json}");
                println!("{}", report.table());
            }
            if report.all_passed() { std::process::ExitCode::SUCCESS } else { std::process::ExitCode::from(1) }
        }
        Err(e) => {
            eprintln!("gpu-selftest: {e}");
            std::process::ExitCode::from(2)
        }
    }
}

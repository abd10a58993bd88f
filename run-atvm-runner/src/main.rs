fn main() -> std::process::ExitCode {
    atvm_common::cli::main("run-atvm-runner", run_atvm_runner::run)
}

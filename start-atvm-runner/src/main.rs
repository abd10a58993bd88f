fn main() -> std::process::ExitCode {
    atvm_common::cli::main("start-atvm-runner", start_atvm_runner::run)
}

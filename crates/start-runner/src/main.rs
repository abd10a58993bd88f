fn main() -> std::process::ExitCode {
    atvm_common::cli::main("start-atvm-runner", atvm_start_runner::run)
}

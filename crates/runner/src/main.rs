fn main() -> std::process::ExitCode {
    atvm_common::cli::main("run-atvm-runner", atvm_runner::run)
}

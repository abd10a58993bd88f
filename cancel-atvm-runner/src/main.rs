fn main() -> std::process::ExitCode {
    atvm_common::cli::main("cancel-atvm-runner", cancel_atvm_runner::run)
}

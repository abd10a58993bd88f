fn main() -> std::process::ExitCode {
    atvm_common::cli::main("cancel-atvm-runner", atvm_cancel_runner::run)
}

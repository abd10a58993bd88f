fn main() -> std::process::ExitCode {
    atvm_common::cli::main("atvm-run-status", atvm_run_status::run)
}

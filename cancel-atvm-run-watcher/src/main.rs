fn main() -> std::process::ExitCode {
    atvm_common::cli::main("cancel-atvm-run-watcher", cancel_atvm_run_watcher::run)
}

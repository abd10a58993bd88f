fn main() -> std::process::ExitCode {
    atvm_common::cli::main("start-atvm-run-watcher", start_atvm_run_watcher::run)
}

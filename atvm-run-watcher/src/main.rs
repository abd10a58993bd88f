fn main() -> std::process::ExitCode {
    atvm_common::cli::main("atvm-run-watcher", atvm_run_watcher::run)
}

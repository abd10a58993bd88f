fn main() -> std::process::ExitCode {
    atvm_common::cli::main("cancel-atvm-run-watcher", atvm_cancel_watcher::run)
}

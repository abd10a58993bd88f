fn main() -> std::process::ExitCode {
    atvm_common::cli::main("start-atvm-run-watcher", atvm_start_watcher::run)
}

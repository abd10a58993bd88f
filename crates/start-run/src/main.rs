fn main() -> std::process::ExitCode {
    atvm_common::cli::main("start-atvm-run", atvm_start_run::run)
}

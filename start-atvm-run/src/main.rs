fn main() -> std::process::ExitCode {
    atvm_common::cli::main("start-atvm-run", start_atvm_run::run)
}

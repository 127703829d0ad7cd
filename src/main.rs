fn main() -> std::process::ExitCode {
    avatar::cli::main()
}

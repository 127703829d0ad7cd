fn main() -> std::process::ExitCode {
    // SAFETY: the first statement of main: no other thread exists and no candle op has run.
    unsafe { avatar::runtime::device::configure_cpu_threads() };
    avatar::cli::main()
}

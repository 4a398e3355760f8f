//! The `deorch` binary: node daemon and CLI in one. All logic lives in the
//! library; this is a thin shell.

fn main() -> std::process::ExitCode {
    deorch::cli::main()
}

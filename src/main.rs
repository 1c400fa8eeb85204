//! The `leasewire` binary: everything lives in [`leasewire::cli`].

fn main() -> std::process::ExitCode {
    leasewire::cli::run()
}

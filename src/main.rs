//! The `leasewire` binary: the command line, its rendering and the daemon's log set-up live in
//! this crate's own [`cli`] module; the library (`leasewire::…`) knows nothing of them.

mod cli;

fn main() -> std::process::ExitCode {
    cli::run()
}

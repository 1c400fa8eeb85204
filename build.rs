//! Compiles every `.proto` file under `proto/` with protox (no system `protoc` needed): the
//! subset of LND's API we call (`proto/lnd/`) and our own control API. (lnd-sim's admin API is
//! the simulator's own and is compiled by simnet/build.rs.)

use std::path::{Path, PathBuf};

fn collect(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "proto") {
            out.push(path);
        }
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let mut files = Vec::new();
    collect(Path::new("proto"), &mut files)?;
    files.sort();
    if files.is_empty() {
        return Ok(());
    }
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    let fds = protox::compile(&files, ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // The control API's messages double as the CLI's `--json` output.
        .type_attribute(".leasewire.control", "#[derive(serde::Serialize)]")
        .compile_fds(fds)?;
    Ok(())
}

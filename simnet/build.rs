//! Compiles lnd-sim's admin API (`proto/lndsim/admin.proto`) with protox, as the root
//! build.rs does for LND's subset: no system `protoc` needed. The admin API belongs to the
//! simulator, so it is generated here and never in the leasewire library.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["proto/lndsim/admin.proto"];
    println!("cargo:rerun-if-changed=proto");
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}

//! Compiles `uts/v1/*.proto` with protox, a protobuf compiler written in Rust, so that no
//! `protoc` binary has to be installed on a build machine, a CI runner or in a Docker image.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["uts/v1/uts.proto"];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(files, ["."])?;
    prost_build::Config::new().compile_fds(descriptors)?;
    Ok(())
}

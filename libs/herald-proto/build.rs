//! Generates the tonic/prost code and the descriptor set for reflection from `proto/`,
//! with the vendored protoc so no system protoc is needed.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let files = [
        "herald/common/v1/common.proto",
        "herald/submit/v1/submit.proto",
        "herald/template/v1/template.proto",
        "herald/preference/v1/preference.proto",
        "herald/queue/v1/queue.proto",
        "herald/admin/v1/admin.proto",
        "herald/inbox/v1/inbox.proto",
        "herald/tracking/v1/tracking.proto",
    ]
    .map(|file| root.join(file));
    let includes = [root.clone(), protoc_bin_vendored::include_path()?];
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);

    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("herald_descriptor.bin"))
        .include_file("herald_protos.rs")
        .compile_with_config(config, &files, &includes)?;
    println!("cargo:rerun-if-changed={}", root.display());
    Ok(())
}

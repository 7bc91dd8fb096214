//! Regenerates `examples/widget_server/grpc/support.v1.rs` from
//! `examples/proto/support.proto`, with `protox` (protobuf in pure Rust)
//! and `tonic-prost-build`: nobody needs `protoc`.
//!
//! ```text
//! cargo run --manifest-path tools/protogen/Cargo.toml
//! ```
//!
//! Run from anywhere; paths are relative to the repository. The output is
//! committed, so the crate and the example build without this tool.

use std::path::Path;
use std::process::ExitCode;

const HEADER: &str = "\
// Generated from examples/proto/support.proto by tools/protogen; do not edit.
// Regenerate with:
//
//     cargo run --manifest-path tools/protogen/Cargo.toml
//
";

fn main() -> ExitCode {
    match generate() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("protogen: {error}");
            ExitCode::FAILURE
        }
    }
}

fn generate() -> Result<(), Box<dyn std::error::Error>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize()?;
    let proto_dir = root.join("examples/proto");
    let out_dir = root.join("examples/widget_server/grpc");
    let descriptors = protox::compile([proto_dir.join("support.proto")], [&proto_dir])?;

    // tonic-prost-build writes `<package>.rs` into a directory; generate
    // into a scratch one, then add the header.
    let scratch = std::env::temp_dir().join(format!("protogen-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .out_dir(&scratch)
        .compile_fds(descriptors)?;
    let generated = std::fs::read_to_string(scratch.join("support.v1.rs"))?;
    std::fs::remove_dir_all(&scratch)?;
    let target = out_dir.join("support.v1.rs");
    std::fs::write(&target, format!("{HEADER}{generated}"))?;
    println!("wrote {}", target.display());
    Ok(())
}

//! An example built from the current sources and run as a process: for
//! tests of what only a process shows (the `listening on` line, the exit
//! status on bad flags) over a real socket.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdout, Command};

/// How long a process may take to print its first line or to exit.
pub const PROCESS_TIMEOUT: Duration = Duration::from_secs(60);

/// The crate features this test was compiled with, so that building the
/// example reuses the library `cargo test` already built.
fn enabled_features() -> Vec<&'static str> {
    [
        ("axum", cfg!(feature = "axum")),
        ("sqlite", cfg!(feature = "sqlite")),
        ("postgres", cfg!(feature = "postgres")),
        ("redis", cfg!(feature = "redis")),
        ("test-kit", cfg!(feature = "test-kit")),
        ("tonic", cfg!(feature = "tonic")),
        ("metrics", cfg!(feature = "metrics")),
    ]
    .into_iter()
    .filter_map(|(feature, enabled)| enabled.then_some(feature))
    .collect()
}

/// `target/<profile>/examples/<name>`, built from the current sources.
///
/// `cargo test --test <file>` does not build the examples, so this runs
/// `cargo build --example <name>` (a no-op when it is up to date) for the
/// profile and the features of this test.
pub fn example_binary(name: &str) -> PathBuf {
    let test_binary = std::env::current_exe().expect("the test binary's path");
    let profile_dir = test_binary
        .parent()
        .and_then(Path::parent)
        .expect("test binaries live in target/<profile>/deps");
    if let Some(cargo) = std::env::var_os("CARGO") {
        let mut build = std::process::Command::new(cargo);
        build.current_dir(env!("CARGO_MANIFEST_DIR")).args([
            "build",
            "--example",
            name,
            "--no-default-features",
        ]);
        let features = enabled_features();
        if !features.is_empty() {
            build.args(["--features", &features.join(",")]);
        }
        match profile_dir.file_name().and_then(OsStr::to_str) {
            Some("debug") | None => {}
            Some(profile) => {
                build.args(["--profile", profile]);
            }
        }
        let output = build.output().expect("cargo runs");
        assert!(
            output.status.success(),
            "cargo build --example {name} failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let binary = profile_dir
        .join("examples")
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        binary.is_file(),
        "{} does not exist: run `cargo build --example {name}` first",
        binary.display()
    );
    binary
}

/// A running example; killed when dropped.
pub struct RunningExample {
    pub child: Child,
    /// The address of its `listening on http://ADDR` line.
    pub addr: SocketAddr,
    /// Kept open so the process never writes to a closed pipe.
    _stdout: BufReader<ChildStdout>,
}

/// Starts `binary` with `args` and waits for its first stdout line,
/// which must be `listening on http://ADDR`.
pub async fn spawn_listening(binary: &Path, args: &[&str]) -> RunningExample {
    let mut child = Command::new(binary)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("the example binary starts");
    let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
    let mut line = String::new();
    let read = tokio::time::timeout(PROCESS_TIMEOUT, stdout.read_line(&mut line))
        .await
        .expect("the binary prints its first line in time")
        .expect("stdout is readable");
    assert!(read > 0, "the binary closed stdout without printing a line");
    let line = line.trim_end();
    let addr = line
        .strip_prefix("listening on http://")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .parse()
        .unwrap_or_else(|error| panic!("{line:?} does not end in an address: {error}"));
    RunningExample {
        child,
        addr,
        _stdout: stdout,
    }
}

/// Runs `binary` with `args` to completion: (status, stdout, stderr).
pub async fn run_to_exit(binary: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    let output = Command::new(binary)
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(PROCESS_TIMEOUT, output)
        .await
        .unwrap_or_else(|_| panic!("{args:?}: the binary did not exit (is it listening?)"))
        .expect("the example binary runs");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

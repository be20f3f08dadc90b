//! Test images for the docker runtime, built here (no registry is
//! reachable): FROM scratch, with a static build of baton whose
//! `sample-app` is the deployed service. Built once per test binary.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Instant;

use super::text;

/// The image every test deploys; its tags are the versions.
pub const IMAGE: &str = "baton-test-app";

// ---------------------------------------------------------------------------
// Images and containers.
// ---------------------------------------------------------------------------

/// Builds the test images once per run of this file: a static baton (cached
/// by cargo under `target/static`), then, FROM scratch,
/// - `v1` and `v2`: the sample app, its version from `$APP_VERSION`;
/// - `healthy`: the same with a HEALTHCHECK that passes;
/// - `sick`: the same with a HEALTHCHECK that never passes.
pub fn images() {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    if let Err(e) = BUILT.get_or_init(build_images) {
        panic!("{e}");
    }
}

fn build_images() -> Result<(), String> {
    docker_reachable()?;
    let binary = static_baton()?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    std::fs::copy(&binary, dir.path().join("baton")).map_err(|e| e.to_string())?;
    let app = "FROM scratch\nLABEL baton-test-image=1\nCOPY baton /baton\n\
               ENTRYPOINT [\"/baton\", \"sample-app\", \"--listen-host\", \"0.0.0.0\"]\n";
    let check = |url: &str| {
        format!(
            "{app}HEALTHCHECK --interval=300ms --timeout=2s --retries=2 \
             CMD [\"/baton\", \"check\", \"{url}\", \"--requests\", \"1\"]\n"
        )
    };
    let variants = [
        (app.to_string(), &["v1", "v2"][..]),
        (check("http://127.0.0.1:8000/healthz"), &["healthy"][..]),
        (check("http://127.0.0.1:1/"), &["sick"][..]),
    ];
    let started = Instant::now();
    for (i, (dockerfile, tags)) in variants.iter().enumerate() {
        let file = dir.path().join(format!("Dockerfile.{i}"));
        std::fs::write(&file, dockerfile).map_err(|e| e.to_string())?;
        let mut build = Command::new("docker");
        build.args(["build", "-q", "-f"]).arg(&file);
        for tag in *tags {
            build.args(["-t", &format!("{IMAGE}:{tag}")]);
        }
        run(build.arg(dir.path()))?;
    }
    // The images these replaced, if the binary changed.
    run(Command::new("docker").args([
        "image",
        "prune",
        "-f",
        "--filter",
        "label=baton-test-image",
    ]))?;
    eprintln!("test images built in {:.1?}", started.elapsed());
    Ok(())
}

fn docker_reachable() -> Result<(), String> {
    run(Command::new("docker").args(["version", "--format", "{{.Server.Version}}"]))
        .map(|_| ())
        .map_err(|e| format!("these tests need a reachable Docker Engine (`docker version`): {e}"))
}

/// `cargo build --release` of baton, statically linked, in its own target
/// directory: the image has nothing else. Optimised lightly, without debug
/// info, to keep the first build short (later runs reuse it).
fn static_baton() -> Result<PathBuf, String> {
    const TARGET: &str = "x86_64-unknown-linux-gnu";
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let target_dir = root.join("target/static");
    let started = Instant::now();
    run(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["build", "--release", "-p", "baton", "--target", TARGET])
            .arg("--target-dir")
            .arg(&target_dir)
            .current_dir(&root)
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .env("RUSTFLAGS", "-C target-feature=+crt-static")
            .env("CARGO_PROFILE_RELEASE_OPT_LEVEL", "1")
            .env("CARGO_PROFILE_RELEASE_DEBUG", "0")
            .env("CARGO_PROFILE_RELEASE_STRIP", "true")
            .env("CARGO_PROFILE_RELEASE_LTO", "false")
            .env("CARGO_PROFILE_RELEASE_CODEGEN_UNITS", "16"),
    )
    .map_err(|e| format!("building a static baton for the test image: {e}"))?;
    eprintln!("static baton built in {:.1?}", started.elapsed());
    Ok(target_dir.join(TARGET).join("release/baton"))
}

/// Runs a command; its stdout, or why it failed.
pub fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed ({}): {}",
            out.status,
            text(&out.stderr).trim()
        ));
    }
    Ok(text(&out.stdout))
}

//! Process helpers and the test/lint/demo drivers.

use std::{
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The one place the eBPF nightly is pinned.
pub fn ebpf_toolchain() -> Result<String> {
    let path = workspace_root().join("lb-ebpf/TOOLCHAIN");
    Ok(std::fs::read_to_string(&path)
        .with_context(|| format!("reading {}", path.display()))?
        .trim()
        .to_string())
}

pub fn cmd(program: &str, args: &[&str]) -> Result<()> {
    let status = Command::new(program)
        .args(args)
        .current_dir(workspace_root())
        .status()
        .with_context(|| format!("running {program}"))?;
    if !status.success() {
        bail!("`{program} {}` failed: {status}", args.join(" "));
    }
    Ok(())
}

pub fn cmd_stdout(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .stderr(Stdio::null())
        .output()
        .with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!("`{program} {}` failed: {}", args.join(" "), out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// True when the command succeeds and its stdout equals `expect`.
pub fn cmd_ok(program: &str, args: &[&str], expect: &str) -> bool {
    cmd_stdout(program, args).is_ok_and(|s| s == expect)
}

/// Every test in the workspace. The privileged tests (XDP, namespaces) run in this same
/// invocation: xtask runs as root on CI and developer machines of this kind.
pub fn test(extra: &[String]) -> Result<()> {
    if !nix_is_root() {
        bail!("`cargo xtask test` needs root (XDP programs, network namespaces)");
    }
    cmd(
        "cargo",
        &["build", "--workspace", "--exclude", "lb-ebpf", "--bins"],
    )?;
    let mut args = vec![
        "test",
        "--workspace",
        "--exclude",
        "lb-ebpf",
        "--no-fail-fast",
    ];
    if !extra.is_empty() {
        args.push("--");
        args.extend(extra.iter().map(String::as_str));
    }
    cmd("cargo", &args)
}

pub fn lint() -> Result<()> {
    cmd("cargo", &["fmt", "--all", "--", "--check"])?;
    cmd(
        "cargo",
        &[
            "clippy",
            "--workspace",
            "--exclude",
            "lb-ebpf",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
    )?;
    let toolchain = ebpf_toolchain()?;
    // Only linting needs clippy on the eBPF nightly; setup stays minimal for build and test.
    cmd(
        "rustup",
        &["component", "add", "--toolchain", &toolchain, "clippy"],
    )?;
    let tc = format!("+{toolchain}");
    cmd(
        "cargo",
        &[
            &tc,
            "clippy",
            "-p",
            "lb-ebpf",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--release",
            "--",
            "-D",
            "warnings",
        ],
    )
}

pub fn demo() -> Result<()> {
    cmd(
        "cargo",
        &["build", "--workspace", "--exclude", "lb-ebpf", "--bins"],
    )?;
    cmd(
        "cargo",
        &["run", "--quiet", "-p", "tests", "--bin", "xlb-demo"],
    )
}

fn nix_is_root() -> bool {
    cmd_ok("id", &["-u"], "0")
}

pub fn bench(json: bool, no_throughput: bool) -> Result<()> {
    cmd(
        "cargo",
        &[
            "build",
            "--release",
            "-p",
            "lb-userspace",
            "-p",
            "tests",
            "--bins",
        ],
    )?;
    let root = workspace_root();
    let xlb = root.join("target/release/xlb");
    let ctl = root.join("target/release/xlb-ctlbench");
    let mut args = vec!["bench"];
    if no_throughput {
        args.push("--no-throughput");
    }
    if !json {
        cmd(&xlb.display().to_string(), &args)?;
        println!();
        return cmd(&ctl.display().to_string(), &[]);
    }
    args.push("--json");
    let mut report: serde_json::Value =
        serde_json::from_str(&cmd_stdout(&xlb.display().to_string(), &args)?)?;
    let control: serde_json::Value =
        serde_json::from_str(&cmd_stdout(&ctl.display().to_string(), &["--json"])?)?;
    report["control_plane"] = control;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

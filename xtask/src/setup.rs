//! `cargo xtask setup`: everything a fresh machine needs, each step a no-op when already done.

use std::{
    env, fs,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};

use crate::util::{cmd, cmd_ok, cmd_stdout, ebpf_toolchain};

const BPF_LINKER_VERSION: &str = "0.13.0";
/// tcpdump: an independent reader of what `xlb capture` writes (capture tests). bird2: the
/// routing daemon of the fleet tests and demo (BGP + BFD on every node and the router).
/// iputils-ping: the system `ping` that VIP echo answers are tested with. chromium: the
/// headless browser the status page is tested in.
const APT_PACKAGES: &[&str] = &[
    "iproute2",
    "ethtool",
    "tcpdump",
    "bird2",
    "iputils-ping",
    "chromium",
];

pub fn run() -> Result<()> {
    let toolchain = ebpf_toolchain()?;
    let sysroot = ensure_toolchain(&toolchain)?;
    let prefix = ensure_llvm_prefix(&toolchain, &sysroot)?;
    ensure_bpf_linker(&prefix)?;
    ensure_apt_packages()?;
    ensure_bpffs()?;
    Ok(())
}

/// The pinned nightly with rust-src; returns its sysroot.
fn ensure_toolchain(toolchain: &str) -> Result<PathBuf> {
    let sysroot = || cmd_stdout("rustup", &["run", toolchain, "rustc", "--print", "sysroot"]);
    let have_src = |root: &Path| root.join("lib/rustlib/src/rust/library/core").is_dir();
    if let Ok(root) = sysroot().map(PathBuf::from)
        && have_src(&root)
    {
        return Ok(root);
    }
    eprintln!("setup: installing {toolchain} with rust-src");
    cmd(
        "rustup",
        &[
            "toolchain",
            "install",
            toolchain,
            "--profile",
            "minimal",
            "--component",
            "rust-src",
        ],
    )?;
    let root = PathBuf::from(sysroot()?);
    if !have_src(&root) {
        bail!("rust-src still missing from {toolchain} after install");
    }
    Ok(root)
}

/// bpf-linker must link the very LLVM that the nightly uses; the nightly ships it as
/// `libLLVM.so.<ver>-rust-<ver>-nightly`. A stable prefix dir holds the names llvm-sys expects;
/// the installed bpf-linker keeps this prefix as its RUNPATH, so it must not live in /tmp.
fn ensure_llvm_prefix(toolchain: &str, sysroot: &Path) -> Result<PathBuf> {
    let lib = fs::read_dir(sysroot.join("lib"))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|name| name.starts_with("libLLVM.so.") && name.contains("-rust-"))
        .with_context(|| format!("no libLLVM.so.*-rust-* in {}/lib", sysroot.display()))?;
    let target = sysroot.join("lib").join(&lib);
    let prefix = cargo_home().join("xlb").join(format!("llvm-{toolchain}"));
    let libdir = prefix.join("lib");
    fs::create_dir_all(&libdir)?;
    for name in ["libLLVM.so", lib.as_str()] {
        let link = libdir.join(name);
        if fs::read_link(&link).ok().as_deref() != Some(target.as_path()) {
            let _ = fs::remove_file(&link);
            symlink(&target, &link)?;
        }
    }
    Ok(prefix)
}

fn ensure_bpf_linker(prefix: &Path) -> Result<()> {
    let stamp = prefix.join("bpf-linker.stamp");
    let want = format!("bpf-linker {BPF_LINKER_VERSION}");
    let have = cmd_stdout("bpf-linker", &["--version"]).unwrap_or_default();
    if have == want && fs::read_to_string(&stamp).ok().as_deref() == Some(want.as_str()) {
        return Ok(());
    }
    eprintln!(
        "setup: building {want} against {} (a few minutes)",
        prefix.display()
    );
    let status = std::process::Command::new("cargo")
        .args([
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--locked",
            "--force",
            "--no-default-features",
            "--features",
            "llvm-22",
        ])
        .env("LLVM_PREFIX", prefix)
        .status()?;
    if !status.success() {
        bail!("cargo install bpf-linker failed: {status}");
    }
    fs::write(&stamp, &want)?;
    Ok(())
}

fn ensure_apt_packages() -> Result<()> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            !cmd_ok(
                "dpkg-query",
                &["-W", "-f=${Status}", p],
                "install ok installed",
            )
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("setup: apt-get install {}", missing.join(" "));
    cmd("apt-get", &["update", "-qq"])?;
    let status = std::process::Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        // No prompts: this runs unattended on CI.
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("running apt-get")?;
    if !status.success() {
        bail!("apt-get install {} failed: {status}", missing.join(" "));
    }
    Ok(())
}

/// Pinning (hitless restart) needs bpffs at /sys/fs/bpf.
fn ensure_bpffs() -> Result<()> {
    let mounts = fs::read_to_string("/proc/mounts")?;
    if mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some("/sys/fs/bpf") && l.contains(" bpf "))
    {
        return Ok(());
    }
    eprintln!("setup: mounting bpffs at /sys/fs/bpf");
    fs::create_dir_all("/sys/fs/bpf")?;
    cmd("mount", &["-t", "bpf", "bpf", "/sys/fs/bpf"])
}

fn cargo_home() -> PathBuf {
    env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cargo")
        })
}

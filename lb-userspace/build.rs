//! Builds `lb-ebpf` for the BPF target with the pinned nightly and embeds it in `xlb`.
//!
//! Preconditions are checked first so a missing toolchain gives one actionable line instead of a
//! wall of linker output. `XLB_SKIP_EBPF=1` writes an empty object (for `cargo check`/docs on
//! machines without the eBPF toolchain); the daemon refuses to load an empty object.

use std::{env, fs, path::PathBuf, process::Command};

const TOOLCHAIN: &str = include_str!("../lb-ebpf/TOOLCHAIN");

fn main() {
    println!("cargo:rerun-if-env-changed=XLB_SKIP_EBPF");
    println!("cargo:rerun-if-changed=../lb-ebpf/TOOLCHAIN");
    // aya-build watches lb-ebpf itself; the kernel side also compiles lb-common (types and the
    // forwarding decision), so a change there must rebuild the object too.
    println!("cargo:rerun-if-changed=../lb-common/src");
    println!("cargo:rerun-if-changed=../lb-common/Cargo.toml");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let object = out_dir.join("lb-ebpf");

    if env::var_os("XLB_SKIP_EBPF").is_some_and(|v| v == "1") {
        println!(
            "cargo:warning=XLB_SKIP_EBPF=1: embedding an empty eBPF object; `xlb` cannot load it"
        );
        fs::write(&object, []).expect("write empty eBPF object");
        return;
    }

    let toolchain = TOOLCHAIN.trim();
    if let Err(problem) = check_toolchain(toolchain) {
        eprintln!(
            "\nerror: cannot build the XDP programs: {problem}\n       run `cargo xtask setup` (installs {toolchain} with rust-src and bpf-linker), then build again.\n"
        );
        std::process::exit(1);
    }

    let root_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets it"))
        .join("../lb-ebpf")
        .canonicalize()
        .expect("lb-ebpf directory");
    let root_dir = root_dir.to_str().expect("utf-8 path");
    // aya-build turns every line the inner cargo prints into a `cargo:warning`; a quiet inner
    // cargo prints only real warnings and errors.
    // SAFETY: the build script is single-threaded here; nothing reads the environment meanwhile.
    unsafe { env::set_var("CARGO_TERM_QUIET", "true") };
    let package = aya_build::Package {
        name: "lb-ebpf",
        root_dir,
        ..Default::default()
    };
    if let Err(err) = aya_build::build_ebpf([package], aya_build::Toolchain::Custom(toolchain)) {
        eprintln!(
            "\nerror: building lb-ebpf failed: {err:#}\n       if the toolchain changed, run `cargo xtask setup`.\n"
        );
        std::process::exit(1);
    }
}

fn check_toolchain(toolchain: &str) -> Result<(), String> {
    let sysroot = Command::new("rustup")
        .args(["run", toolchain, "rustc", "--print", "sysroot"])
        .output()
        .map_err(|e| format!("rustup not runnable ({e})"))?;
    if !sysroot.status.success() {
        return Err(format!("toolchain {toolchain} is not installed"));
    }
    let sysroot = PathBuf::from(String::from_utf8_lossy(&sysroot.stdout).trim());
    if !sysroot.join("lib/rustlib/src/rust/library/core").is_dir() {
        return Err(format!("rust-src is missing from {toolchain}"));
    }
    let linker = Command::new("bpf-linker").arg("--version").output();
    match linker {
        Ok(out) if out.status.success() => Ok(()),
        _ => Err("bpf-linker is not on PATH".to_string()),
    }
}

//! `scripts/setup.sh` decides what to install from dpkg's database, not from files that
//! happen to lie around. These tests run its decision (`--print-decision`) against fake
//! dpkg databases (`VEIL_DPKG_ADMINDIR`), so a regression to guessing fails here.

use std::path::{Path, PathBuf};
use std::process::Command;

/// What the build needs, in the order the script names them.
const BUILD: [&str; 4] = ["cmake", "make", "g++", "libclang-dev"];

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/setup.sh")
}

/// A dpkg admin directory whose `status` file lists `packages` with their dpkg state
/// (`installed`, `config-files`, `half-configured`, ...).
fn fake_dpkg(packages: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut status = String::new();
    for (name, state) in packages {
        let want = if *state == "config-files" {
            "deinstall"
        } else {
            "install"
        };
        status.push_str(&format!(
            "Package: {name}\nStatus: {want} ok {state}\nPriority: optional\n\
             Maintainer: Test <test@example.invalid>\nArchitecture: amd64\nVersion: 1.0\n\
             Description: fake {name}\n\n"
        ));
    }
    std::fs::write(dir.path().join("status"), status).expect("write status");
    std::fs::create_dir_all(dir.path().join("info")).expect("info dir");
    std::fs::create_dir_all(dir.path().join("updates")).expect("updates dir");
    dir
}

/// The packages the script would install (the first line of its decision), or an empty
/// list when it says there is nothing to install.
fn decision(db: &Path, extra: &[&str]) -> Vec<String> {
    let out = Command::new("bash")
        .arg(script())
        .arg("--print-decision")
        .args(extra)
        .env("VEIL_DPKG_ADMINDIR", db)
        .output()
        .expect("run scripts/setup.sh");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "setup.sh --print-decision failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let first = stdout.lines().next().unwrap_or_default();
    if first == "setup: nothing to install" {
        return Vec::new();
    }
    let names = first
        .strip_prefix("setup: would install ")
        .unwrap_or_else(|| panic!("unexpected decision line: {stdout}"));
    let names: Vec<String> = names.split_whitespace().map(str::to_owned).collect();
    // Every package to install comes with the reason it is needed.
    for name in &names {
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with(&format!("  {name}: "))),
            "no reason given for {name}: {stdout}"
        );
    }
    names
}

fn all_installed(except: &[&str]) -> Vec<(&'static str, &'static str)> {
    BUILD
        .iter()
        .chain(["time"].iter())
        .filter(|p| !except.contains(p))
        .map(|p| (*p, "installed"))
        .collect()
}

#[test]
fn nothing_installed_names_every_build_package() {
    let db = fake_dpkg(&[]);
    assert_eq!(decision(db.path(), &[]), BUILD);
}

#[test]
fn everything_installed_installs_nothing() {
    let db = fake_dpkg(&all_installed(&[]));
    assert_eq!(decision(db.path(), &[]), Vec::<String>::new());
    assert_eq!(decision(db.path(), &["--bench"]), Vec::<String>::new());
}

#[test]
fn each_missing_package_is_named_alone() {
    for missing in BUILD {
        let db = fake_dpkg(&all_installed(&[missing]));
        assert_eq!(
            decision(db.path(), &[]),
            [missing],
            "with only {missing} missing"
        );
    }
}

#[test]
fn removed_or_half_installed_packages_count_as_missing() {
    // A package removed with its configuration kept, or one whose configuration failed,
    // does not give the build what it needs.
    let mut packages = all_installed(&["libclang-dev", "cmake"]);
    packages.push(("libclang-dev", "config-files"));
    packages.push(("cmake", "half-configured"));
    let db = fake_dpkg(&packages);
    assert_eq!(decision(db.path(), &[]), ["cmake", "libclang-dev"]);
}

#[test]
fn an_unrelated_libclang_does_not_count() {
    // What a new machine has: a libclang-cpp runtime, which bindgen cannot use.
    let mut packages = all_installed(&["libclang-dev"]);
    packages.push(("libclang-cpp14", "installed"));
    let db = fake_dpkg(&packages);
    assert_eq!(decision(db.path(), &[]), ["libclang-dev"]);
}

#[test]
fn the_benchmarks_also_need_time() {
    let db = fake_dpkg(&all_installed(&["time"]));
    assert_eq!(decision(db.path(), &[]), Vec::<String>::new());
    assert_eq!(decision(db.path(), &["--bench"]), ["time"]);
}

/// What `scripts/build-image.sh` and the boot test add (`--image`), in the script's order.
const IMAGE: [&str; 8] = [
    "nasm",
    "acpica-tools",
    "uuid-dev",
    "cpio",
    "patch",
    "curl",
    "xz-utils",
    "qemu-system-x86",
];

#[test]
fn the_image_option_adds_what_the_image_build_and_boot_test_need() {
    let db = fake_dpkg(&all_installed(&[]));
    assert_eq!(decision(db.path(), &["--image"]), IMAGE);
    let mut packages = all_installed(&[]);
    packages.extend(IMAGE.iter().map(|p| (*p, "installed")));
    packages.retain(|(p, _)| *p != "qemu-system-x86");
    let db = fake_dpkg(&packages);
    assert_eq!(decision(db.path(), &["--image"]), ["qemu-system-x86"]);
}

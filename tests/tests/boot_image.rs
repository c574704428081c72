//! The guest image of `scripts/build-image.sh`: its expected measurements, its contents,
//! and the image booted under QEMU serving a verified session.
//!
//! The image is read from `$VEIL_IMAGE_DIR` (default `image/` in the checkout). These
//! tests are skipped with a message when the image or `qemu-system-x86_64` is absent,
//! unless `VEIL_REQUIRE_IMAGE=1` (then that fails them; `scripts/test.sh` builds the
//! image and sets it). The boot runs under TCG (software emulation): the SEV firmware does
//! not boot without SNP, so QEMU boots the same kernel, initrd and command line with
//! SeaBIOS, and the server inside attests with the mock TEE.

use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use veil_attestation::{LaunchConfig, MockLaunch};
use veil_tests::harness::{self, text, veil};

/// How long the guest may take from QEMU's start until `veil verify` succeeds: boot
/// (5–12 s under TCG here), unpacking the data disk, and the server's start.
const BOOT_DEADLINE: Duration = Duration::from_secs(240);
/// How long `veil ask` may take: the guest unseals the model and generates under software
/// emulation.
const ASK_DEADLINE: Duration = Duration::from_secs(600);
/// The default model, sealed onto the guest's data disk.
const MODEL: &str = "models/SmolLM2-135M-Instruct.Q4_1.gguf";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn required() -> bool {
    std::env::var("VEIL_REQUIRE_IMAGE").as_deref() == Ok("1")
}

/// The image directory, when it holds a complete build.
fn image() -> Option<PathBuf> {
    let dir = std::env::var_os("VEIL_IMAGE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("image"));
    let complete = [
        "build-info.json",
        "vmlinuz",
        "initrd.img",
        "OVMF.fd",
        "cmdline",
        "veil-server",
    ]
    .iter()
    .all(|f| dir.join(f).is_file());
    if complete {
        return Some(dir);
    }
    assert!(
        !required(),
        "VEIL_REQUIRE_IMAGE=1 but {} holds no complete image (scripts/build-image.sh)",
        dir.display()
    );
    eprintln!(
        "skipped: no guest image in {} (run scripts/build-image.sh)",
        dir.display()
    );
    None
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn build_info(image: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(image.join("build-info.json")).expect("build-info.json"))
        .expect("build-info.json is JSON")
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, bytes))
}

fn measure(image: &Path, initrd: &Path, vcpus: u64, features: &str) -> String {
    let cmdline = String::from_utf8(read(&image.join("cmdline"))).expect("cmdline is UTF-8");
    let o = veil(&[
        "measure",
        "snp",
        "--ovmf",
        &image.join("OVMF.fd").display().to_string(),
        "--kernel",
        &image.join("vmlinuz").display().to_string(),
        "--initrd",
        &initrd.display().to_string(),
        "--append",
        &cmdline,
        "--vcpus",
        &vcpus.to_string(),
        "--vcpu-type",
        "EPYC-v4",
        "--vmm",
        "qemu",
        "--guest-features",
        features,
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    String::from_utf8_lossy(&o.stdout).trim().to_owned()
}

#[test]
fn build_info_names_every_artefact_and_veil_measure_agrees_with_its_measurements() {
    let Some(image) = image() else { return };
    let info = build_info(&image);
    for name in ["OVMF.fd", "vmlinuz", "initrd.img", "veil-server"] {
        assert_eq!(
            info["artefacts"][name].as_str(),
            Some(sha256_hex(&read(&image.join(name))).as_str()),
            "{name}: build-info.json is not this build's"
        );
    }
    assert_eq!(
        info["cmdline"].as_str().map(str::as_bytes),
        Some(read(&image.join("cmdline")).as_slice())
    );
    let cases = info["measurements"].as_array().expect("measurements");
    let mut seen: Vec<(u64, &str)> = Vec::new();
    for case in cases {
        let vcpus = case["vcpus"].as_u64().expect("vcpus");
        let features = case["guest_features"].as_str().expect("guest_features");
        let expected = case["measurement"].as_str().expect("measurement");
        assert_eq!(expected.len(), 96, "a 48-byte measurement in hex");
        assert_eq!(
            measure(&image, &image.join("initrd.img"), vcpus, features),
            expected
        );
        seen.push((vcpus, features));
    }
    seen.sort_unstable();
    assert_eq!(
        seen,
        [
            (1, "0x1"),
            (1, "0x21"),
            (2, "0x1"),
            (2, "0x21"),
            (4, "0x1"),
            (4, "0x21")
        ]
    );
}

#[test]
fn one_changed_initrd_byte_changes_the_expected_measurement() {
    let Some(image) = image() else { return };
    let mut initrd = read(&image.join("initrd.img"));
    let dir = tempfile::tempdir().expect("tempdir");
    let tampered = dir.path().join("initrd.img");
    let i = initrd.len() / 2;
    initrd[i] ^= 0x01;
    std::fs::write(&tampered, &initrd).expect("written");
    let good = measure(&image, &image.join("initrd.img"), 1, "0x1");
    let bad = measure(&image, &tampered, 1, "0x1");
    assert_ne!(good, bad, "the measurement does not cover the initrd");
}

/// `gzip -dc initrd.img | cpio ARGS`: its standard output.
fn cpio(image: &Path, args: &str) -> Vec<u8> {
    let o = harness::run(
        Command::new("sh").arg("-c").arg(format!(
            "gzip -dc '{}' | cpio --quiet {args}",
            image.join("initrd.img").display()
        )),
        Duration::from_secs(60),
    );
    assert!(o.status.success(), "cpio {args}: {}", text(&o));
    o.stdout
}

/// The initrd's file list, sorted.
fn initrd_files(image: &Path) -> Vec<String> {
    let mut files: Vec<String> = String::from_utf8_lossy(&cpio(image, "-t"))
        .lines()
        .map(str::to_owned)
        .collect();
    files.sort();
    files
}

#[test]
fn the_initrd_holds_the_server_and_its_init_and_nothing_that_gives_a_shell() {
    let Some(image) = image() else { return };
    let files = initrd_files(&image);
    let mut expected: Vec<String> = [
        "bin",
        "bin/busybox",
        "bin/veil-server",
        "dev",
        "etc",
        "etc/udhcpc.script",
        "init",
        "lib",
        "lib/modules",
        "lib/modules/configfs.ko",
        "lib/modules/failover.ko",
        "lib/modules/net_failover.ko",
        "lib/modules/sev-guest.ko",
        "lib/modules/tsm.ko",
        "lib/modules/virtio_blk.ko",
        "lib/modules/virtio_net.ko",
        "proc",
        "run",
        "sys",
        "tmp",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    expected.sort();
    // No applet links (sh, getty, login), no swap, no other program: busybox runs only as
    // /init's interpreter and the commands /init names, and /init ends by exec'ing the
    // server.
    assert_eq!(files, expected);
    let init = String::from_utf8(read(&repo().join("scripts/image/init"))).expect("init");
    let last = init
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .expect("a last line");
    assert!(last.starts_with("exec /bin/veil-server "), "{last}");
    let code: String = init
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    for word in [
        "getty",
        "swapon",
        "telnetd",
        "httpd",
        "sshd",
        "crond",
        "syslogd",
        "/bin/sh -i",
    ] {
        assert!(!code.contains(word), "/init runs {word}");
    }
    // The veil-server beside the image (what the owner measures) is the initrd's.
    assert!(
        cpio(&image, "-i --to-stdout bin/veil-server") == read(&image.join("veil-server")),
        "image/veil-server is not the initrd's bin/veil-server"
    );
}

/// A loopback port that is free now (QEMU binds it for its forward).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// QEMU, killed when dropped.
struct Guest {
    child: Child,
    console: PathBuf,
}

impl Guest {
    fn console(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.console).unwrap_or_default()).into_owned()
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ok(o: &Output, what: &str, guest: &Guest) {
    assert_eq!(
        o.status.code(),
        Some(0),
        "{what}: {}\n--- guest console ---\n{}",
        text(o),
        guest.console()
    );
}

#[test]
fn the_image_boots_under_qemu_and_serves_a_verified_session() {
    let Some(image) = image() else { return };
    let Some(qemu) = find_on_path("qemu-system-x86_64") else {
        assert!(
            !required(),
            "VEIL_REQUIRE_IMAGE=1 but qemu-system-x86_64 is not on PATH (scripts/setup.sh --image installs it)"
        );
        eprintln!(
            "skipped: qemu-system-x86_64 is not on PATH (scripts/setup.sh --image installs it)"
        );
        return;
    };
    let model = repo().join(MODEL);
    if !model.is_file() {
        assert!(
            std::env::var("VEIL_REQUIRE_MODEL").as_deref() != Ok("1"),
            "VEIL_REQUIRE_MODEL=1 but {} is absent",
            model.display()
        );
        eprintln!(
            "skipped: {} is absent (scripts/fetch-model.sh)",
            model.display()
        );
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    std::fs::create_dir(&data).expect("data dir");

    // The owner seals the model; the mock platform stands in for the AMD secure processor.
    let sealed = data.join("model.veil");
    let key = dir.path().join("model.key");
    let o = veil(&[
        "seal",
        &model.display().to_string(),
        "-o",
        &sealed.display().to_string(),
        "--key-out",
        &key.display().to_string(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let root = harness::mock_platform(&data.join("platform"));

    // The operator writes the launch configuration and would launch with its HOST_DATA.
    let conf = data.join("launch.conf");
    let o = veil(&[
        "measure",
        "host-data",
        "--tee",
        "mock",
        "--listen",
        "0.0.0.0:8443",
        "--model",
        &sealed.display().to_string(),
        "-o",
        &conf.display().to_string(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let host_data = String::from_utf8_lossy(&o.stdout).trim().to_owned();

    // The data disk: a tar archive that /init unpacks.
    let disk = dir.path().join("data.tar");
    let o = harness::run(
        Command::new("tar")
            .args(["--format=ustar", "--owner=0", "--group=0", "-cf"])
            .arg(&disk)
            .arg("-C")
            .arg(&data)
            .args(["launch.conf", "model.veil", "platform"]),
        Duration::from_secs(60),
    );
    assert!(o.status.success(), "{}", text(&o));

    // The owner's policy: this platform's root, the image's veil-server launched with this
    // configuration, and its HOST_DATA.
    let launch = LaunchConfig::parse(&std::fs::read_to_string(&conf).expect("launch.conf"))
        .expect("launch.conf parses");
    let measurement =
        MockLaunch::new(&read(&image.join("veil-server")), launch.entries().clone()).measurement();
    let policy = dir.path().join("policy.toml");
    harness::write_policy(&policy, &[&root], &[measurement]);
    let mut toml = std::fs::read_to_string(&policy).expect("policy");
    toml.push_str(&format!("host_data = [\"{host_data}\"]\n"));
    std::fs::write(&policy, toml).expect("policy");
    let policy = policy.display().to_string();

    let port = free_port();
    let console = dir.path().join("console.log");
    let cmdline = String::from_utf8(read(&image.join("cmdline"))).expect("cmdline");
    // One vCPU: with two, multi-threaded TCG can let a vCPU run a stale translation of
    // kernel text that the other is live-patching (static keys, through int3), and the
    // guest dies at boot with "Oops: int3" (seen once in CI, in enqueue_timer). One vCPU
    // has no cross-vCPU patching to race.
    let child = Command::new(&qemu)
        .args([
            "-machine", "q35", "-accel", "tcg", "-cpu", "max", "-smp", "1", "-m", "1536",
        ])
        .args(["-display", "none", "-monitor", "none", "-no-reboot"])
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .arg("-kernel")
        .arg(image.join("vmlinuz"))
        .arg("-initrd")
        .arg(image.join("initrd.img"))
        .args(["-append", &cmdline])
        .arg("-drive")
        .arg(format!(
            "file={},format=raw,if=virtio,readonly=on",
            disk.display()
        ))
        .args([
            "-netdev",
            &format!("user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:{port}-:8443"),
        ])
        .args(["-device", "virtio-net-pci,netdev=n0"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("qemu-system-x86_64");
    let mut guest = Guest { child, console };
    let url = format!("https://127.0.0.1:{port}");

    // Verify: the first success means the guest booted and its server attests.
    let started = Instant::now();
    loop {
        if let Some(status) = guest.child.try_wait().expect("qemu") {
            let mut stderr = String::new();
            if let Some(mut e) = guest.child.stderr.take() {
                let _ = e.read_to_string(&mut stderr);
            }
            panic!(
                "QEMU exited ({status}): {stderr}\n--- guest console ---\n{}",
                guest.console()
            );
        }
        let o = veil(&["verify", &url, "--policy", &policy]);
        if o.status.code() == Some(0) {
            break;
        }
        assert!(
            started.elapsed() < BOOT_DEADLINE,
            "the guest did not serve verified evidence within {BOOT_DEADLINE:?}: {}\n--- guest console ---\n{}",
            text(&o),
            guest.console()
        );
        std::thread::sleep(Duration::from_secs(2));
    }
    let booted = started.elapsed();
    eprintln!("the guest served verified evidence {booted:?} after QEMU started");

    let o = veil(&[
        "provision",
        &url,
        "--policy",
        &policy,
        "--key",
        &key.display().to_string(),
    ]);
    ok(&o, "veil provision", &guest);
    let asked = Instant::now();
    let o = harness::run(
        Command::new(harness::binary("veil")).args([
            "ask",
            &url,
            "--policy",
            &policy,
            "--max-tokens",
            "16",
            "--system",
            "You are a helpful assistant.",
            "What is the capital of France?",
        ]),
        ASK_DEADLINE,
    );
    eprintln!(
        "veil ask took {:?}; console:\n{}",
        asked.elapsed(),
        guest.console()
    );
    ok(&o, "veil ask", &guest);
    let answer = String::from_utf8_lossy(&o.stdout);
    assert!(answer.contains("Paris"), "{answer}");
    eprintln!("session done {:?} after QEMU started", started.elapsed());

    // The guest's own log: the server ran from the launch configuration, bound through
    // HOST_DATA, and configfs-tsm / sev-guest were absent as they are without SNP.
    let log = guest.console();
    assert!(log.contains("veil-init: eth0 has"), "{log}");
    assert!(log.contains("launch configuration bound"), "{log}");
    assert!(log.contains("module sev-guest not loaded"), "{log}");
    // /init lifts RLIMIT_MEMLOCK, so the server's own hardening holds in the image: the
    // decrypted weights are locked (the server warns when they are not).
    assert!(log.contains("model unsealed and loaded"), "{log}");
    assert!(!log.contains("not locked in memory"), "{log}");
    assert!(
        !log.contains('\x1b'),
        "ANSI escapes on the serial console: {log:?}"
    );
}

/// `sev-snp-measure` (virtee's Python tool, `pip install sev-snp-measure==0.0.13`), when
/// installed; required when `VEIL_REQUIRE_SEV_SNP_MEASURE=1` (`.ci/run` installs it).
fn sev_snp_measure() -> Option<PathBuf> {
    let found = find_on_path("sev-snp-measure");
    if found.is_none() {
        assert!(
            std::env::var("VEIL_REQUIRE_SEV_SNP_MEASURE").as_deref() != Ok("1"),
            "VEIL_REQUIRE_SEV_SNP_MEASURE=1 but sev-snp-measure is not on PATH"
        );
        eprintln!("skipped: sev-snp-measure is not on PATH (pip install sev-snp-measure==0.0.13)");
    }
    found
}

#[test]
fn sev_snp_measure_computes_the_same_measurements_for_the_image() {
    let Some(image) = image() else { return };
    let Some(tool) = sev_snp_measure() else {
        return;
    };
    let info = build_info(&image);
    let cmdline = String::from_utf8(read(&image.join("cmdline"))).expect("cmdline");
    for case in info["measurements"].as_array().expect("measurements") {
        let vcpus = case["vcpus"].as_u64().expect("vcpus").to_string();
        let features = case["guest_features"].as_str().expect("guest_features");
        let o = harness::run(
            Command::new(&tool)
                .args([
                    "--mode",
                    "snp",
                    "--vmm-type",
                    "QEMU",
                    "--vcpu-type",
                    "EPYC-v4",
                ])
                .args(["--vcpus", &vcpus, "--guest-features", features])
                .arg("--ovmf")
                .arg(image.join("OVMF.fd"))
                .arg("--kernel")
                .arg(image.join("vmlinuz"))
                .arg("--initrd")
                .arg(image.join("initrd.img"))
                .args(["--append", &cmdline]),
            Duration::from_secs(120),
        );
        assert!(o.status.success(), "sev-snp-measure: {}", text(&o));
        assert_eq!(
            String::from_utf8_lossy(&o.stdout).trim(),
            case["measurement"].as_str().expect("measurement"),
            "{vcpus} vCPUs, guest features {features}"
        );
    }
}

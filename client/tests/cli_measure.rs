//! `veil measure snp` and `veil policy snp` as a user runs them: the measurement vectors
//! of `$VEIL_MEASURE_VECTORS` (default `../shared/vectors/measure` beside the checkout,
//! read by path; SKIPPED when absent unless `VEIL_REQUIRE_VECTORS=1`), the JSON form,
//! refusals, and a written policy that Veil's loader accepts.

use std::path::Path;
use std::process::{Command, Output};

use veil_attestation::Policy;
use veil_tests::measure_vectors::dir as vectors;

fn veil(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_veil"))
        .args(args)
        .output()
        .expect("veil runs")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `veil measure snp`, then each group of flags in turn.
fn measure(flags: &[&[&str]]) -> Output {
    veil(&[&["measure", "snp"][..], &flags.concat()].concat())
}

/// `veil policy snp` with `flags`, writing to `out`.
fn policy(out: &Path, flags: &[&str]) -> Output {
    let out = out.to_str().expect("utf8");
    veil(&[&["policy", "snp", "-o", out][..], flags].concat())
}

/// The firmware `ovmf` with `empty` as both kernel and initrd.
fn boot<'a>(ovmf: &'a str, empty: &'a str) -> [&'a str; 6] {
    ["--ovmf", ovmf, "--kernel", empty, "--initrd", empty]
}

/// `vcpus` EPYC-v4 vCPUs under QEMU with the guest features `gf`.
fn qemu<'a>(vcpus: &'a str, gf: &'a str) -> [&'a str; 8] {
    [
        "--vcpus",
        vcpus,
        "--vcpu-type",
        "EPYC-v4",
        "--vmm",
        "qemu",
        "--guest-features",
        gf,
    ]
}

/// The command line of the vectors' `append` cases.
const APPEND: [&str; 2] = ["--append", "console=ttyS0 loglevel=7"];
/// Four vCPUs on GCE with guest features 0x1 (`snp-gce-amdsev-4vcpu-emptykernel-gf1`).
const GCE_4VCPU_GF1: [&str; 6] = ["--vcpus", "4", "--vmm", "gce", "--guest-features", "0x1"];

fn path(dir: &Path, name: &str) -> String {
    dir.join(name).display().to_string()
}

/// The paths of the vectors' firmware `ovmf` and of their empty kernel (`empty.bin`).
fn ovmf_and_empty(dir: &Path, ovmf: &str) -> (String, String) {
    (path(dir, ovmf), path(dir, "empty.bin"))
}

// snp-amdsev-1vcpu-emptykernel-append-gf21 and snp-gce-amdsev-4vcpu-emptykernel-gf1 of
// manifest.json.
const AMDSEV_APPEND_GF21: &str = "803f691094946e42068aaa3a8f9e26a5c89f36f7b73ecfb28c653360fe4b3aba7e534442e7e1e17895dfe778d0228977";
const GCE_4VCPU: &str = "5c5debf100fc339f90276e761ee1f1658d08922c3b20e2a2e6c7a6c3370b2452a15a00eae11886a93d6fd1e7ab81e29d";
const SVSM_2VCPU: &str = "9b94745036aafddf4f7f8b00c7513abb5b7703178cb95aaa57928bd963d68d3bfcb715d6019b9167ee2517b11b0d9be7";

#[test]
fn measure_snp_prints_the_expected_measurement() {
    let Some(dir) = vectors() else { return };
    let (ovmf, empty) = ovmf_and_empty(&dir, "ovmf_AmdSev_suffix.bin");
    let o = measure(&[&boot(&ovmf, &empty), &APPEND, &qemu("1", "0x21")]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        format!("{AMDSEV_APPEND_GF21}\n")
    );

    // The same with the signature instead of the type name.
    let o = measure(&[
        &boot(&ovmf, &empty),
        &APPEND,
        &["--vcpus", "1", "--vcpu-sig", "800f12", "--vmm", "qemu"],
        &["--guest-features", "21"],
    ]);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        AMDSEV_APPEND_GF21,
        "{}",
        text(&o)
    );
}

#[test]
fn measure_snp_gce_needs_no_vcpu_type() {
    let Some(dir) = vectors() else { return };
    let (ovmf, empty) = ovmf_and_empty(&dir, "ovmf_AmdSev_suffix.bin");
    let gce = |more: &[&str]| measure(&[&boot(&ovmf, &empty), &GCE_4VCPU_GF1, more]);
    let o = gce(&[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), GCE_4VCPU);
    let o = gce(&["--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    assert_eq!(v["measurement"], GCE_4VCPU);
    assert!(v["vcpu_sig"].is_null(), "{v}");
    // A signature given is ignored by GCE, and recorded.
    let o = gce(&["--json", "--vcpu-sig", "0x800f12"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    assert_eq!(v["measurement"], GCE_4VCPU);
    assert_eq!(v["vcpu_sig"], "0x800f12");
}

#[test]
fn measure_snp_svsm() {
    let Some(dir) = vectors() else { return };
    let (ovmf, svsm) = (path(&dir, "svsm_ovmf.fd"), path(&dir, "svsm.bin"));
    let o = measure(&[
        &["--ovmf", &ovmf, "--svsm", &svsm, "--vars-size", "540672"],
        &["--vcpus", "2", "--vcpu-type", "EPYC-v4", "--vmm", "qemu"],
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), SVSM_2VCPU);
}

#[test]
fn measure_snp_json_names_every_input_with_its_digest() {
    let Some(dir) = vectors() else { return };
    let (ovmf, empty) = ovmf_and_empty(&dir, "ovmf_AmdSev_suffix.bin");
    let o = measure(&[
        &boot(&ovmf, &empty),
        &APPEND,
        &qemu("1", "0x21"),
        &["--json"],
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    assert_eq!(v["measurement"], AMDSEV_APPEND_GF21);
    assert_eq!(v["mode"], "snp");
    assert_eq!(v["vmm"], "qemu");
    assert_eq!(v["vcpus"], 1);
    assert_eq!(v["vcpu_type"], "EPYC-v4");
    assert_eq!(v["vcpu_sig"], "0x800f12");
    assert_eq!(v["guest_features"], "0x21");
    assert_eq!(v["append"], "console=ttyS0 loglevel=7");
    // SHA256SUMS of the vectors.
    assert_eq!(
        v["ovmf"]["sha256"],
        "8f765dfabc127fc0a938a0744a3103ec15864d7d794eb4c398aa976b6d6ab16c"
    );
    let empty_sha = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    assert_eq!(v["kernel"]["sha256"], empty_sha);
    assert_eq!(v["initrd"]["sha256"], empty_sha);
    assert_eq!(v["kernel"]["path"], empty.as_str());
}

#[test]
fn measure_snp_refuses_a_kernel_on_firmware_without_kernel_hashes() {
    let Some(dir) = vectors() else { return };
    let (ovmf, empty) = ovmf_and_empty(&dir, "ovmf_OvmfX64_suffix.bin");
    let o = measure(&[&boot(&ovmf, &empty), &qemu("1", "0x21")]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains(
            "Kernel specified but OVMF metadata doesn't include SNP_KERNEL_HASHES section"
        ),
        "{}",
        text(&o)
    );
    assert!(o.stdout.is_empty());
}

#[test]
fn measure_snp_names_a_missing_file() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let missing = tmp.path().join("no-such-OVMF.fd");
    let o = measure(&[
        &["--ovmf", missing.to_str().expect("utf8")],
        &qemu("1", "0x1"),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("--ovmf: cannot read"), "{}", text(&o));
    assert!(text(&o).contains("no-such-OVMF.fd"), "{}", text(&o));
}

#[test]
fn measure_snp_qemu_needs_a_vcpu_type_and_knows_its_names() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let fw = tmp.path().join("fw.bin");
    std::fs::write(&fw, [0u8; 4096]).expect("write");
    let fw = fw.to_str().expect("utf8");
    let run = |vcpus: &str, vmm: &str, more: &[&str]| {
        measure(&[
            &["--ovmf", fw, "--vcpus", vcpus, "--vmm", vmm],
            &["--guest-features", "1"],
            more,
        ])
    };
    let o = run("1", "qemu", &[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("--vcpu-type"), "{}", text(&o));
    let o = run("1", "qemu", &["--vcpu-type", "Skylake"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("unknown vCPU type \"Skylake\""),
        "{}",
        text(&o)
    );
    // Usage errors are clap's: exit 2.
    let o = run("0", "qemu", &[]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let o = run("1", "krun", &[]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
}

const M1: &str = "803f691094946e42068aaa3a8f9e26a5c89f36f7b73ecfb28c653360fe4b3aba7e534442e7e1e17895dfe778d0228977";
const M2: &str = "6D287813EB5222D770F75005C664E34C204F385CE832CC2CE7D0D6F354454362F390EF83A92046C042E706363B4B08FA";
const HOST_DATA: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
const MODEL: &str = "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100";

#[test]
fn policy_snp_writes_a_policy_that_loads_with_the_fields_given() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("policy.toml");
    let o = policy(
        &out,
        &[
            "--measurement",
            M1,
            "--measurement",
            M2,
            "--host-data",
            HOST_DATA,
            "--model",
            MODEL,
            "--min-tcb",
            "bootloader=3,tee=0,snp=8,microcode=115",
            "--min-tcb",
            "turin:bootloader=1,fmc=2",
            "--product",
            "genoa",
            "--product",
            "turin",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let toml = std::fs::read_to_string(&out).expect("written");
    Policy::from_toml(&toml).expect("Veil's loader accepts it");
    // What the file says, key by key (the policy's fields are private: the file is its
    // public form).
    let p: toml::Table = toml.parse().expect("TOML");
    let strings = |key: &str| -> Vec<String> {
        p.get(key)
            .and_then(|v| v.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    assert_eq!(strings("tee"), vec!["snp"]);
    assert!(strings("mock_roots").is_empty());
    assert_eq!(
        p["allow_debug"].as_bool(),
        Some(false),
        "debug stays disallowed"
    );
    assert_eq!(p["any_measurement"].as_bool(), Some(false));
    assert_eq!(p["allow_migration_agent"].as_bool(), Some(false));
    assert_eq!(
        strings("measurements"),
        vec![M1.to_owned(), M2.to_ascii_lowercase()]
    );
    assert_eq!(strings("host_data"), vec![HOST_DATA.to_owned()]);
    assert_eq!(strings("models"), vec![MODEL.to_owned()]);
    assert_eq!(strings("products"), vec!["genoa", "turin"]);
    let tcb = |product: &str, component: &str| {
        p["min_tcb"][product][component]
            .as_integer()
            .expect("a number")
    };
    assert_eq!(
        ["bootloader", "tee", "snp", "microcode", "fmc"].map(|c| tcb("all", c)),
        [3, 0, 8, 115, 0]
    );
    assert_eq!(
        ["bootloader", "fmc", "snp"].map(|c| tcb("turin", c)),
        [1, 2, 0]
    );
    assert_eq!(p["vmpl"].as_array().map(Vec::len), Some(1));
    assert_eq!(p["vmpl"][0].as_integer(), Some(0));

    // Refuses to replace it without --force.
    let o = policy(&out, &["--measurement", M1]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("--force"), "{}", text(&o));
}

#[test]
fn policy_snp_refuses_bad_hex_by_flag_name() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("policy.toml");
    for (args, flag) in [
        (
            vec!["--measurement", "abcd"],
            "--measurement \"abcd\" is not 48 bytes",
        ),
        (
            vec!["--measurement", M1, "--host-data", &M1[..63]],
            "--host-data",
        ),
        (
            vec!["--measurement", M1, "--model", "zz"],
            "--model \"zz\" is not 32 bytes",
        ),
        (vec!["--measurement", M1, "--min-tcb", "snp=x"], "--min-tcb"),
        (
            vec!["--measurement", M1, "--min-tcb", "rome:snp=1"],
            "unknown product",
        ),
        (
            vec!["--measurement", M1, "--min-tcb", "debug=1"],
            "unknown component",
        ),
        (vec!["--measurement", M1, "--product", "mock"], "--product"),
    ] {
        let o = policy(&out, &args);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {}", text(&o));
        assert!(text(&o).contains(flag), "{args:?}: {}", text(&o));
        assert!(!out.exists(), "{args:?}: nothing written");
    }
    // No measurement at all is a usage error.
    let o = policy(&out, &[]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
}

#[test]
fn measure_then_policy_in_one_step() {
    let Some(dir) = vectors() else { return };
    let (ovmf, empty) = ovmf_and_empty(&dir, "ovmf_AmdSev_suffix.bin");
    let o = measure(&[&["--ovmf", &ovmf, "--kernel", &empty], &qemu("4", "0x1")]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let m = String::from_utf8_lossy(&o.stdout).trim().to_owned();
    // snp-amdsev-4vcpu-emptykernel-noappend-gf1
    assert!(m.starts_with("5061fffb019493a9"), "{m}");
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("p.toml");
    let o = policy(&out, &["--measurement", &m]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let p = Policy::from_toml(&std::fs::read_to_string(&out).expect("read")).expect("loads");
    let mut want = [0u8; 48];
    hex::decode_to_slice(&m, &mut want).expect("hex");
    assert_eq!(p.measurements(), [want]);
}

/// The written policy appraises real AMD-signed evidence (`shared/vectors/snp`): its
/// measurement check passes for the report's own MEASUREMENT and fails for another.
#[test]
fn policy_snp_appraises_real_snp_evidence_by_measurement() {
    use veil_attestation::{Check, Offline};
    let all = veil_tests::vectors::all();
    let Some(v) = all.first() else { return };
    let tmp = tempfile::tempdir().expect("tempdir");
    let own = hex::encode(v.parsed().measurement());
    for (name, m, accepted) in [("own", own.as_str(), true), ("other", M1, false)] {
        let out = tmp.path().join(format!("{name}.toml"));
        let o = policy(&out, &["--measurement", m]);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        let p = Policy::from_toml(&std::fs::read_to_string(&out).expect("read")).expect("loads");
        let verdict =
            p.appraise_offline(&v.evidence(), &Offline::danger_any_report_data(v.valid_at));
        let measurement_failed = verdict
            .as_ref()
            .err()
            .is_some_and(|r| r.failed(Check::Measurement));
        assert_eq!(!measurement_failed, accepted, "{}: {name}", v.set.name);
    }
}

#[test]
fn measure_host_data_prints_the_digest_of_the_configuration_it_writes() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let conf = dir.path().join("launch.conf");
    let model = "ab".repeat(32);
    let o = veil(&[
        "measure",
        "host-data",
        "--tee",
        "snp",
        "--listen",
        "0.0.0.0:8443",
        "--model-sha256",
        &model,
        "--key-broker",
        "http://10.0.0.1:8444",
        "-o",
        conf.to_str().expect("utf8"),
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let out: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    let written = veil_attestation::LaunchConfig::parse(
        &std::fs::read_to_string(&conf).expect("the file is written"),
    )
    .expect("the written file parses");
    assert_eq!(out["host_data"], hex::encode(written.host_data()));
    {
        use base64::Engine as _;
        assert_eq!(
            out["host_data_base64"],
            base64::engine::general_purpose::STANDARD.encode(written.host_data())
        );
    }
    assert_eq!(written.key_broker(), Some("http://10.0.0.1:8444"));
    assert_eq!(out["config"]["veil.model_sha256"], model);
    // Refused, naming the value at fault.
    let o = veil(&[
        "measure",
        "host-data",
        "--tee",
        "snp",
        "--listen",
        "localhost",
        "--model-sha256",
        &model,
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("veil.listen"), "{}", text(&o));
}

//! `veil report` and `veil mock-platform` as a user runs them: real vectors, mock
//! reports, exit codes.

use std::path::Path;
use std::process::Output;

use veil_tests::harness::{text, veil};
use veil_tests::vectors;

fn rfc3339(t: std::time::SystemTime) -> String {
    time::OffsetDateTime::from(t)
        .format(&time::format_description::well_known::Rfc3339)
        .expect("formats")
}

/// Writes the vector's report and certificates the way snpguest lays them out.
fn lay_out(v: &vectors::Vector, dir: &Path) -> (String, String) {
    std::fs::create_dir_all(dir).expect("mkdir");
    let report = dir.join("report.bin");
    std::fs::write(&report, &v.report).expect("write report");
    let certs = dir.join("certs");
    std::fs::create_dir_all(&certs).expect("mkdir");
    let vek_name = if v.vek.subject_cn().as_deref() == Some("SEV-VLEK") {
        "vlek.der"
    } else {
        "vcek.der"
    };
    std::fs::write(certs.join(vek_name), v.vek.as_der()).expect("write vek");
    for c in &v.chain {
        let cn = c.subject_cn().unwrap_or_default();
        let name = if cn.starts_with("ARK-") {
            "ark.pem"
        } else if cn.starts_with("SEV-VLEK-") {
            "asvk.pem"
        } else {
            "ask.pem"
        };
        std::fs::write(certs.join(name), c.to_pem()).expect("write chain");
    }
    (report.display().to_string(), certs.display().to_string())
}

/// Runs `veil report verify REPORT --certs CERTS --at <when v's certificates are valid>`
/// followed by `extra`.
fn verify(v: &vectors::Vector, report: &str, certs: &str, extra: &[&str]) -> Output {
    let at = rfc3339(v.valid_at);
    let args = ["report", "verify", report, "--certs", certs, "--at", &at];
    veil(&[&args[..], extra].concat())
}

const PERMISSIVE: &str = "any_measurement = true\nallow_debug = true\nvmpl = [0, 1, 2, 3]\n";

#[test]
fn every_real_vector_verifies_through_the_cli() {
    let all = vectors::all();
    let tmp = tempfile::tempdir().expect("tempdir");
    let policy = tmp.path().join("permissive.toml");
    std::fs::write(&policy, PERMISSIVE).expect("write policy");
    for (i, v) in all.iter().enumerate() {
        let dir = tmp.path().join(i.to_string());
        let (report, certs) = lay_out(v, &dir);
        let o = verify(
            v,
            &report,
            &certs,
            &["--policy", policy.to_str().expect("utf8")],
        );
        assert_eq!(o.status.code(), Some(0), "{}: {}", v.set.name, text(&o));
        assert!(text(&o).contains("VERIFIED"), "{}", text(&o));
        assert!(!text(&o).contains("MOCK"), "{}", text(&o));
    }
}

#[test]
fn hex_reports_are_read_as_well_as_raw_ones() {
    let hex = vectors::matching("with a hex report", |v| {
        v.set.report_format.as_deref() == Some("hex")
    });
    let Some(v) = hex.first() else {
        return;
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let (_, certs) = lay_out(v, tmp.path());
    let hex_path = v.root.join(v.set.report.as_deref().expect("report"));
    let o = verify(v, hex_path.to_str().expect("utf8"), &certs, &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
}

#[test]
fn azure_hcl_reports_are_read_directly() {
    for v in vectors::matching("with an Azure HCL report", |v| {
        v.set.report_format.as_deref() == Some("hcl")
    }) {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (_, certs) = lay_out(&v, tmp.path());
        let hcl = v.root.join(v.set.report.as_deref().expect("report"));
        let o = verify(&v, hcl.to_str().expect("utf8"), &certs, &[]);
        assert_eq!(o.status.code(), Some(0), "{}: {}", v.set.name, text(&o));
    }
}

#[test]
fn the_debug_vector_is_rejected_by_default_with_exit_3() {
    let Some(v) = vectors::named("go-sev-guest/milan") else {
        return;
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let (report, certs) = lay_out(&v, tmp.path());
    let o = verify(&v, &report, &certs, &[]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(text(&o).contains("✗ debug"), "{}", text(&o));
}

#[test]
fn a_flipped_bit_is_rejected_with_the_check_named_in_json() {
    for v in vectors::all().into_iter().take(3) {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (report, certs) = lay_out(&v, tmp.path());
        let mut raw = v.report.clone();
        raw[0x90] ^= 0x10; // MEASUREMENT
        std::fs::write(&report, &raw).expect("write");
        let o = verify(&v, &report, &certs, &["--json"]);
        assert_eq!(o.status.code(), Some(3), "{}", text(&o));
        let verdict: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json verdict");
        assert_eq!(verdict["verified"], false);
        let failed: Vec<&str> = verdict["failed"]
            .as_array()
            .expect("list")
            .iter()
            .filter_map(|f| f.as_str())
            .collect();
        assert!(failed.contains(&"report_signature"), "{failed:?}");
    }
}

#[test]
fn certificates_of_another_product_are_rejected() {
    let Some(v) = vectors::named("oak/genoa-oc") else {
        return;
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let (report, certs) = lay_out(&v, tmp.path());
    let milan =
        veil_attestation::chain::amd_roots(veil_attestation::Product::Milan).expect("roots");
    std::fs::write(Path::new(&certs).join("ask.pem"), milan.ask.to_pem()).expect("write");
    std::fs::write(Path::new(&certs).join("ark.pem"), milan.ark.to_pem()).expect("write");
    let o = verify(&v, &report, &certs, &[]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
}

#[test]
fn report_show_prints_every_field() {
    let Some(v) = vectors::named("oak/turin-oc") else {
        return;
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let (report, _) = lay_out(&v, tmp.path());
    let o = veil(&["report", "show", &report]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let out = text(&o);
    assert!(
        out.contains(&hex::encode(v.parsed().measurement())),
        "{out}"
    );
    assert!(
        out.contains("fmc=0 bootloader=1 tee=0 snp=2 microcode=71"),
        "{out}"
    );
    let o = veil(&["report", "show", &report, "--json"]);
    let fields: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(fields["version"], 5);
    assert_eq!(fields["tcb_layout"], "turin");
}

#[test]
fn bad_input_gives_exit_1_with_the_file_named_and_usage_errors_exit_2() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let junk = tmp.path().join("junk.bin");
    std::fs::write(&junk, b"not a report").expect("write");
    let o = veil(&["report", "show", junk.to_str().expect("utf8")]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("junk.bin"), "{}", text(&o));
    let o = veil(&[
        "report",
        "verify",
        "/nonexistent/report.bin",
        "--certs",
        "/nonexistent",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let o = veil(&["report", "frobnicate"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
}

#[test]
fn mock_reports_verify_only_with_the_mock_root_named() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("platform");
    let d = dir.to_str().expect("utf8");
    let o = veil(&["mock-platform", "init", d]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.join("vcek.key"))
        .expect("key")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(
        veil(&["mock-platform", "init", d]).status.code(),
        Some(1),
        "refuses to overwrite"
    );

    let exe = tmp.path().join("server.bin");
    std::fs::write(&exe, b"pretend server executable").expect("write");
    let e = exe.to_str().expect("utf8");
    let report = tmp.path().join("mock-report.bin");
    let r = report.to_str().expect("utf8");
    let o = veil(&[
        "mock-platform",
        "attest",
        d,
        "--executable",
        e,
        "--config",
        "listen=127.0.0.1:8443",
        "-o",
        r,
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));

    let root = dir.join("ark.pem");
    let o = veil(&[
        "report",
        "verify",
        r,
        "--certs",
        d,
        "--mock-root",
        root.to_str().expect("utf8"),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("VERIFIED (MOCK)"), "{}", text(&o));

    let o = veil(&["report", "verify", r, "--certs", d]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(text(&o).contains("✗ trust_anchor"), "{}", text(&o));
    assert!(text(&o).contains("MOCK"), "{}", text(&o));

    // A policy pinning the measurement: the same binary and config pass, another config fails.
    let measure = |config: &str| {
        let o = veil(&[
            "mock-platform",
            "measure",
            "--executable",
            e,
            "--config",
            config,
        ]);
        String::from_utf8(o.stdout).expect("utf8").trim().to_owned()
    };
    let m = measure("listen=127.0.0.1:8443");
    assert_ne!(m, measure("listen=0.0.0.0:8443"));
    let fingerprint = veil_attestation::Certificate::from_pem(&std::fs::read(&root).expect("root"))
        .expect("pem")
        .fingerprint();
    let policy = tmp.path().join("policy.toml");
    std::fs::write(
        &policy,
        format!("tee = [\"mock\"]\nmock_roots = [\"{fingerprint}\"]\nmeasurements = [\"{m}\"]\n"),
    )
    .expect("write");
    let p = policy.to_str().expect("utf8");
    assert_eq!(
        veil(&["report", "verify", r, "--certs", d, "--policy", p])
            .status
            .code(),
        Some(0)
    );
    // `mock-platform policy` writes the same policy for the platform and launch.
    let written = tmp.path().join("written.toml");
    let w = written.to_str().expect("utf8");
    let o = veil(&[
        "mock-platform",
        "policy",
        d,
        "--executable",
        e,
        "--config",
        "listen=127.0.0.1:8443",
        "-o",
        w,
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(
        veil(&["report", "verify", r, "--certs", d, "--policy", w])
            .status
            .code(),
        Some(0)
    );
    let o = veil(&[
        "mock-platform",
        "attest",
        d,
        "--executable",
        e,
        "--config",
        "listen=0.0.0.0:8443",
        "-o",
        r,
        "--force",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    for policy in [p, w] {
        let o = veil(&["report", "verify", r, "--certs", d, "--policy", policy]);
        assert_eq!(o.status.code(), Some(3), "{}", text(&o));
        assert!(text(&o).contains("✗ measurement"), "{}", text(&o));
    }
}

#[test]
fn a_policy_that_names_a_crl_refuses_a_revoked_mock_intermediate() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = |name: &str| tmp.path().join(name).to_str().expect("utf8").to_owned();
    let (d, e, r) = (path("platform"), path("server.bin"), path("report.json"));
    assert_eq!(veil(&["mock-platform", "init", &d]).status.code(), Some(0));
    std::fs::write(&e, b"pretend server executable").expect("write");
    let launch = [
        "--executable",
        e.as_str(),
        "--config",
        "listen=127.0.0.1:8443",
    ];
    let o = veil(
        &[
            &["mock-platform", "attest", &d][..],
            &launch,
            &["-o", &path("report.bin"), "--evidence", &r],
        ]
        .concat(),
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let p = path("policy.toml");
    let o = veil(&[&["mock-platform", "policy", &d][..], &launch, &["-o", &p]].concat());
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    // The CRL is named relative to the policy file.
    let policy = std::fs::read_to_string(&p).expect("policy");
    std::fs::write(&p, format!("crls = [\"root.crl\"]\n{policy}")).expect("write");

    // Named but missing: the policy does not load, and the error names the entry.
    let o = veil(&["report", "verify", &r, "--policy", &p]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("crls entry \"root.crl\""), "{}", text(&o));

    // A certificate is not a CRL.
    std::fs::copy(
        tmp.path().join("platform/ark.pem"),
        tmp.path().join("root.crl"),
    )
    .expect("copy");
    let o = veil(&["report", "verify", &r, "--policy", &p]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("not an X.509 CRL"), "{}", text(&o));

    // A current CRL from the root that does not list the intermediate: verified.
    let crl = path("root.crl");
    let o = veil(&["mock-platform", "crl", &d, "-o", &crl, "--force"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("SEV-Mock not revoked"), "{}", text(&o));
    let o = veil(&["report", "verify", &r, "--policy", &p]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("✓ revocation"), "{}", text(&o));

    // The root revokes the intermediate: refused, and the check named.
    let o = veil(&[
        "mock-platform",
        "crl",
        &d,
        "--revoke",
        "-o",
        &crl,
        "--force",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let o = veil(&["report", "verify", &r, "--policy", &p]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(text(&o).contains("✗ revocation"), "{}", text(&o));
    assert!(
        text(&o).contains("SEV-Mock (serial 02) was revoked"),
        "{}",
        text(&o)
    );

    // The same CRL given on the command line, to a policy that names none.
    let o = veil(
        &[
            &["mock-platform", "policy", &d][..],
            &launch,
            &["-o", &p, "--force"],
        ]
        .concat(),
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let o = veil(&["report", "verify", &r, "--policy", &p]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("– revocation"), "{}", text(&o));
    let o = veil(&["report", "verify", &r, "--policy", &p, "--crl", &crl]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(text(&o).contains("✗ revocation"), "{}", text(&o));
}

#[test]
fn a_failing_json_command_still_answers_json_and_says_each_error_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "measurements = [1\n").expect("write");
    let bad = bad.display().to_string();
    // Before any appraisal: the policy does not parse.
    let o = veil(&["verify", "https://127.0.0.1:1", "--policy", &bad, "--json"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("a JSON body on stdout");
    let message = v["error"].as_str().expect("error");
    assert_eq!(message.matches("TOML parse error").count(), 1, "{message}");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(stderr.matches("TOML parse error").count(), 1, "{stderr}");
    // Without --json, nothing on stdout.
    let o = veil(&["verify", "https://127.0.0.1:1", "--policy", &bad]);
    assert_eq!(
        (o.status.code(), o.stdout.len()),
        (Some(1), 0),
        "{}",
        text(&o)
    );
    // A file that is not there, for another --json command.
    let o = veil(&[
        "report",
        "show",
        &dir.path().join("none.bin").display().to_string(),
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("a JSON body on stdout");
    assert!(
        v["error"].as_str().is_some_and(|e| e.contains("none.bin")),
        "{v}"
    );
}

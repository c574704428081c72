//! `veil report verify` on Azure CVM evidence (`az-snp-vtpm`): Trustee's evidence files
//! from `$VEIL_SNP_VECTORS/trustee/az-snp-vtpm`, and Veil's own bundle of the same
//! evidence; the expected nonce given as `--report-data`, the PCRs printed, exit codes.

use std::path::PathBuf;

use veil_tests::harness::{failed_checks, text, veil};
use veil_tests::vectors;

/// A time at which the Milan and Genoa VCEKs of these files are valid.
const AT: &str = "2025-06-01T00:00:00Z";
const V2_NONCE: &str = "982f5c6e45df0ed3f10b6f60b02f0c8390e281300f3805e2279c16168cd6ae9aa398f647caa2338748cd0fd9f5f819ef";
const V2_PCR0: &str = "84275b2f4312cd4fc6cbe6b152ad3c3683e513d9f1e23c34fca160c8cca7a6a7";

fn file(name: &str) -> Option<String> {
    let path: PathBuf = vectors::dir()?.join("trustee/az-snp-vtpm").join(name);
    Some(path.to_str().expect("utf8").to_owned())
}

#[test]
fn trustee_files_verify_with_their_nonce_and_show_the_pcrs() {
    let challenge = hex::encode(b"challenge");
    for (name, nonce, pcr0) in [
        ("evidence-v0.json", challenge.as_str(), "e15c44796beabf46abcec7c57e590942041e47497e4ec27571c8b7664f48dced"),
        ("evidence-v1.json", challenge.as_str(), "e15c44796beabf46abcec7c57e590942041e47497e4ec27571c8b7664f48dced"),
        ("evidence-v2.json", V2_NONCE, V2_PCR0),
        ("evidence-genoa.json", "0218488bae25d2509232bf676f1a66a30d7372add909109b36016ef136f2938ca05475f8b46094de6b64270ea35d950f", "afd689d0bb1c5f36f023fbaf574135f555a28a10c1f6b938d2a25e70c7783338"),
    ] {
        let Some(path) = file(name) else { return };
        let o = veil(&["report", "verify", &path, "--report-data", nonce, "--at", AT]);
        let out = text(&o);
        assert_eq!(o.status.code(), Some(0), "{name}: {out}");
        assert!(out.contains("✓ quote_nonce"), "{name}: {out}");
        assert!(out.contains("✓ vtpm_quote"), "{name}: {out}");
        assert!(out.contains(&format!(" 0  {pcr0}")), "{name}: {out}");
        assert!(out.contains("VERIFIED"), "{name}: {out}");
    }
}

#[test]
fn a_wrong_nonce_exits_3_naming_quote_nonce() {
    let Some(path) = file("evidence-v2.json") else {
        return;
    };
    let mut wrong = V2_NONCE.to_owned();
    wrong.replace_range(0..2, "00");
    let o = veil(&[
        "report",
        "verify",
        &path,
        "--report-data",
        &wrong,
        "--at",
        AT,
    ]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert_eq!(failed_checks(&o), vec!["quote_nonce"], "{}", text(&o));
    // Not hex, or longer than 64 bytes: an error, not a rejection.
    for bad in ["zz", &"00".repeat(65)] {
        let o = veil(&["report", "verify", &path, "--report-data", bad, "--at", AT]);
        assert_eq!(o.status.code(), Some(1), "{}", text(&o));
        assert!(text(&o).contains("1 to 64 bytes"), "{}", text(&o));
    }
}

#[test]
fn a_policy_pins_pcr0_and_the_json_verdict_lists_the_pcrs() {
    let Some(path) = file("evidence-v2.json") else {
        return;
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let good = tmp.path().join("good.toml");
    std::fs::write(
        &good,
        format!(
            "tee = [\"az-snp-vtpm\"]\nany_measurement = true\npcrs = {{ 0 = \"{V2_PCR0}\" }}\n"
        ),
    )
    .expect("write");
    let o = veil(&[
        "report",
        "verify",
        &path,
        "--report-data",
        V2_NONCE,
        "--at",
        AT,
        "--json",
        "--policy",
        good.to_str().expect("utf8"),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let verdict: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json verdict");
    assert_eq!(verdict["tee"], "az-snp-vtpm");
    assert_eq!(verdict["vtpm"]["pcrs"]["0"], V2_PCR0);
    assert_eq!(verdict["vtpm"]["extra_data"], V2_NONCE);

    let bad = tmp.path().join("bad.toml");
    std::fs::write(
        &bad,
        format!(
            "tee = [\"az-snp-vtpm\"]\nany_measurement = true\npcrs = {{ 0 = \"{}\" }}\n",
            "00".repeat(32)
        ),
    )
    .expect("write");
    let o = veil(&[
        "report",
        "verify",
        &path,
        "--report-data",
        V2_NONCE,
        "--at",
        AT,
        "--policy",
        bad.to_str().expect("utf8"),
    ]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert_eq!(failed_checks(&o), vec!["pcrs"], "{}", text(&o));

    // A policy without az-snp-vtpm refuses it.
    let snp = tmp.path().join("snp.toml");
    std::fs::write(&snp, "any_measurement = true\n").expect("write");
    let o = veil(&[
        "report",
        "verify",
        &path,
        "--report-data",
        V2_NONCE,
        "--at",
        AT,
        "--policy",
        snp.to_str().expect("utf8"),
    ]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert_eq!(failed_checks(&o), vec!["tee_kind"], "{}", text(&o));
}

#[test]
fn veils_own_az_snp_vtpm_bundle_verifies_the_same_way() {
    let Some(path) = file("evidence-v2.json") else {
        return;
    };
    let trustee =
        veil_attestation::TrusteeEvidence::from_json(&std::fs::read(&path).expect("read"))
            .expect("parses");
    let evidence = trustee.to_evidence().expect("evidence");
    let tmp = tempfile::tempdir().expect("tempdir");
    let bundle = tmp.path().join("evidence.json");
    std::fs::write(&bundle, evidence.to_json()).expect("write");
    let b = bundle.to_str().expect("utf8");
    let o = veil(&["report", "verify", b, "--report-data", V2_NONCE, "--at", AT]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains(V2_PCR0), "{}", text(&o));
    // A flipped byte in the quote's signature.
    let mut e = evidence.clone();
    e.vtpm.as_mut().expect("vtpm").signature[0] ^= 1;
    std::fs::write(&bundle, e.to_json()).expect("write");
    let o = veil(&["report", "verify", b, "--report-data", V2_NONCE, "--at", AT]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert_eq!(failed_checks(&o), vec!["vtpm_quote"], "{}", text(&o));
    // `veil report show` reads the SNP report of either file.
    let o = veil(&["report", "show", &path]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
}

#[test]
fn veil_policy_snp_writes_an_az_snp_vtpm_policy_with_pinned_pcrs() {
    let Some(path) = file("evidence-v2.json") else {
        return;
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let policy = tmp.path().join("az.toml");
    let p = policy.to_str().expect("utf8");
    // The paravisor's launch measurement in this evidence.
    let measurement = "5b0ce64ad1c1f6375dbda5f760b98526ca1bcf91b8195091afc28e7b024251d68fe32e05af34048d6607678cd23283ff";
    let pcr0 = format!("0={V2_PCR0}");
    let o = veil(&[
        "policy",
        "snp",
        "--measurement",
        measurement,
        "--tee",
        "az-snp-vtpm",
        "--pcr",
        &pcr0,
        "-o",
        p,
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("tee az-snp-vtpm"), "{}", text(&o));
    let o = veil(&[
        "report",
        "verify",
        &path,
        "--report-data",
        V2_NONCE,
        "--at",
        AT,
        "--policy",
        p,
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("✓ pcrs"), "{}", text(&o));
    // --pcr without az-snp-vtpm, or malformed: usage of the flag is named.
    for args in [
        vec!["--pcr", pcr0.as_str()],
        vec!["--tee", "az-snp-vtpm", "--pcr", "24=00"],
        vec!["--tee", "sgx"],
    ] {
        let mut all = vec![
            "policy",
            "snp",
            "--measurement",
            measurement,
            "-o",
            p,
            "--force",
        ];
        all.extend(args);
        let o = veil(&all);
        assert_eq!(o.status.code(), Some(1), "{}", text(&o));
        assert!(text(&o).contains("--"), "{}", text(&o));
    }
}

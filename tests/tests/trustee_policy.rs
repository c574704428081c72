//! `veil policy rego` evaluated as a Trustee KBS evaluates its resource policy: with the
//! Rego engine Trustee uses (regorus 0.11), on the claims its SNP verifier emits for each
//! real AMD-signed report of the vectors (the field list of Trustee's
//! `attestation-service/docs/parsed_claims.md`, as trustee 2026-08 encodes them: hex
//! strings, booleans and numbers), under the EAR token's annotated evidence.

use serde_json::{json, Value};
use sev::firmware::guest::AttestationReport;
use sev::parser::ByteParser as _;
use veil_tests::harness::{text, veil};
use veil_tests::vectors;

const RESOURCE: &str = "default/veil/model-key";

/// The SNP claims as Trustee's verifier lists them.
fn claims(report: &AttestationReport) -> Value {
    json!({
        "policy_abi_major": report.policy.abi_major(),
        "policy_abi_minor": report.policy.abi_minor(),
        "policy_smt_allowed": report.policy.smt_allowed(),
        "policy_migrate_ma": report.policy.migrate_ma_allowed(),
        "policy_debug_allowed": report.policy.debug_allowed(),
        "policy_single_socket": report.policy.single_socket_required(),
        "reported_tcb_bootloader": report.reported_tcb.bootloader,
        "reported_tcb_tee": report.reported_tcb.tee,
        "reported_tcb_snp": report.reported_tcb.snp,
        "reported_tcb_microcode": report.reported_tcb.microcode,
        "platform_tsme_enabled": report.plat_info.tsme_enabled(),
        "platform_smt_enabled": report.plat_info.smt_enabled(),
        "measurement": hex::encode(report.measurement),
        "report_data": hex::encode(report.report_data),
        "init_data": hex::encode(report.host_data),
        "chip_id": hex::encode(report.chip_id),
    })
}

/// The KBS's policy input: the EAR token's claims around the verifier's.
fn input(tee: &str, claims: &Value) -> Value {
    json!({"submods": {"cpu0": {
        "ear.status": "warning",
        "ear.veraison.annotated-evidence": {tee: claims},
    }}})
}

/// Whether `rego` allows a request for `path` (a list, as trustee 2026-08 gives it, or a
/// string, as earlier ones did) with `input`.
fn allows(rego: &str, input: &Value, path: Value) -> bool {
    let mut engine = regorus::Engine::new();
    engine
        .add_policy("policy.rego".into(), rego.into())
        .unwrap_or_else(|e| panic!("the Rego does not parse: {e}\n{rego}"));
    engine
        .set_input_json(&input.to_string())
        .expect("the input parses");
    engine
        .add_data_json(
            &json!({"plugin": "resource", "resource-path": path, "query": {}}).to_string(),
        )
        .expect("the data parses");
    let value = engine
        .eval_rule("data.policy.allow".into())
        .unwrap_or_else(|e| panic!("allow does not evaluate: {e}\n{rego}"));
    value == regorus::Value::from(true)
}

fn list(path: &str) -> Value {
    json!(path.split('/').collect::<Vec<_>>())
}

/// `veil policy rego POLICY`: the Rego and what was not translated.
fn rego_of(dir: &std::path::Path, policy: &str) -> (String, String) {
    let file = dir.join("policy.toml");
    std::fs::write(&file, policy).expect("the policy is written");
    let o = veil(&["policy", "rego", &file.display().to_string()]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    (
        String::from_utf8(o.stdout.clone()).expect("utf-8"),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn the_rego_releases_the_key_exactly_to_the_claims_the_veil_policy_accepts() {
    let dir = tempfile::tempdir().expect("a directory");
    let vectors = vectors::all();
    for v in &vectors {
        let report = AttestationReport::from_bytes(&v.report).expect("sev parses the vector");
        let claims = claims(&report);
        let tcb = &report.reported_tcb;
        let chip = hex::encode(report.chip_id);
        let policy = format!(
            "measurements = [\"{}\"]\nhost_data = [\"{}\"]\nallow_debug = {}\nallow_migration_agent = {}\n{}\
             [min_tcb.all]\nbootloader = {}\ntee = {}\nsnp = {}\nmicrocode = {}\n",
            hex::encode(report.measurement),
            hex::encode(report.host_data),
            report.policy.debug_allowed(),
            report.policy.migrate_ma_allowed(),
            if report.chip_id == [0; 64] {
                String::new()
            } else {
                format!("chip_ids = [\"{chip}\"]\n")
            },
            tcb.bootloader,
            tcb.tee,
            tcb.snp,
            tcb.microcode,
        );
        let (rego, stderr) = rego_of(dir.path(), &policy);
        let name = &v.set.name;
        assert!(
            stderr.contains("not translated: min_tcb"),
            "{name}: {stderr}"
        );

        // The report the policy was written for: released, whichever way the KBS gives the path.
        assert!(
            allows(&rego, &input("snp", &claims), list(RESOURCE)),
            "{name}: refused\n{rego}"
        );
        assert!(
            allows(&rego, &input("snp", &claims), json!(format!("/{RESOURCE}"))),
            "{name}: refused with a string path"
        );
        // Another resource, or the resource asked of another plugin: refused.
        assert!(!allows(
            &rego,
            &input("snp", &claims),
            list("default/veil/other")
        ));
        // Each claim the policy constrains, changed: refused.
        let changed = |field: &str, value: Value| {
            let mut c = claims.clone();
            c[field] = value;
            allows(&rego, &input("snp", &c), list(RESOURCE))
        };
        assert!(
            !changed("measurement", json!("00".repeat(48))),
            "{name}: measurement"
        );
        assert!(
            !changed("init_data", json!("11".repeat(32))),
            "{name}: init_data"
        );
        if !report.policy.debug_allowed() {
            assert!(
                !changed("policy_debug_allowed", json!(true)),
                "{name}: debug"
            );
        }
        if !report.policy.migrate_ma_allowed() {
            assert!(
                !changed("policy_migrate_ma", json!(true)),
                "{name}: migration agent"
            );
        }
        if report.chip_id != [0; 64] {
            assert!(
                !changed("chip_id", json!("22".repeat(64))),
                "{name}: chip_id"
            );
        }
        for (field, value) in [
            ("reported_tcb_bootloader", tcb.bootloader),
            ("reported_tcb_tee", tcb.tee),
            ("reported_tcb_snp", tcb.snp),
            ("reported_tcb_microcode", tcb.microcode),
        ] {
            if value > 0 {
                assert!(
                    !changed(field, json!(value - 1)),
                    "{name}: {field} below the minimum"
                );
            }
            assert!(
                changed(field, json!(u16::from(value) + 1)),
                "{name}: {field} above"
            );
        }
        // A claim missing (another verifier's shape): refused, not an error.
        let mut c = claims.clone();
        c.as_object_mut().expect("an object").remove("measurement");
        assert!(!allows(&rego, &input("snp", &c), list(RESOURCE)));
        // The sample verifier's claims, whatever they say: refused.
        let sample = json!({"svn": "1", "report_data": claims["report_data"], "init_data": ""});
        assert!(!allows(&rego, &input("sample", &sample), list(RESOURCE)));
    }
    if !vectors.is_empty() {
        eprintln!("{} vectors evaluated", vectors.len());
    }
}

#[test]
fn smt_and_any_measurement_translate_and_a_policy_that_releases_nothing_is_refused() {
    let dir = tempfile::tempdir().expect("a directory");
    let claims = json!({
        "measurement": "ab".repeat(48), "init_data": "00".repeat(32),
        "policy_debug_allowed": false, "policy_migrate_ma": false, "policy_smt_allowed": true,
    });
    let (rego, _) = rego_of(dir.path(), "any_measurement = true\nallow_smt = false\n");
    assert!(
        !allows(&rego, &input("snp", &claims), list(RESOURCE)),
        "SMT allowed by the guest policy"
    );
    let mut no_smt = claims.clone();
    no_smt["policy_smt_allowed"] = json!(false);
    assert!(allows(&rego, &input("snp", &no_smt), list(RESOURCE)));
    no_smt["measurement"] = json!("cd".repeat(48));
    assert!(
        allows(&rego, &input("snp", &no_smt), list(RESOURCE)),
        "any measurement"
    );

    // Untranslatable checks are named.
    let (_, stderr) = rego_of(
        dir.path(),
        &format!(
            "measurements = [\"{}\"]\nmin_guest_svn = 2\nfamily_ids = [\"{}\"]\nmodels = [\"{}\"]\n",
            "ab".repeat(48),
            "00".repeat(16),
            "00".repeat(32)
        ),
    );
    for field in ["min_guest_svn", "family_ids", "models"] {
        assert!(
            stderr.contains(&format!("not translated: {field}")),
            "{field}: {stderr}"
        );
    }

    // A policy under which nothing would be released is an error, not an empty Rego.
    for (policy, said) in [
        ("", "accepts no measurement"),
        ("tee = [\"mock\"]\nany_measurement = true\nmock_roots = [\"00000000000000000000000000000000000000000000000000000000000000aa\"]\n", "accepts no snp evidence"),
        ("any_measurement = true\nvmpl = [1]\n", "VMPL 0"),
    ] {
        let file = dir.path().join("bad.toml");
        std::fs::write(&file, policy).expect("written");
        let o = veil(&["policy", "rego", &file.display().to_string()]);
        assert_ne!(o.status.code(), Some(0), "{policy:?} translated");
        assert!(text(&o).contains(said), "{policy:?}: {}", text(&o));
    }
    let file = dir.path().join("ok.toml");
    std::fs::write(&file, "any_measurement = true\n").expect("written");
    let o = veil(&[
        "policy",
        "rego",
        &file.display().to_string(),
        "--resource",
        "a/b",
    ]);
    assert!(text(&o).contains("REPO/TYPE/TAG"), "{}", text(&o));
}

//! Printing verdicts: a per-check table for people, JSON for scripts.

use std::io::Write;

use serde_json::json;
use veil_attestation::{Claims, Outcome, Rejection, Report, Status, VtpmClaims};

/// A verdict to print: the claims of evidence that passed (fresh or offline), or the
/// rejection.
pub type Verdict<'a> = Result<&'a Claims, &'a Rejection>;

/// Prints one line per check: ✓ passed, ✗ failed, – not checked.
pub fn print_outcomes(outcomes: &[Outcome]) {
    let _ = write_outcomes(&mut std::io::stdout().lock(), outcomes);
}

fn write_outcomes(out: &mut dyn Write, outcomes: &[Outcome]) -> std::io::Result<()> {
    let width = outcomes
        .iter()
        .map(|o| o.check.name().len())
        .max()
        .unwrap_or(0);
    for o in outcomes {
        let mark = match o.status {
            Status::Passed => "✓",
            Status::Failed => "✗",
            Status::Skipped => "–",
        };
        writeln!(out, "  {mark} {:width$}  {}", o.check.name(), o.detail)?;
    }
    Ok(())
}

/// Prints the verdict of an appraisal for people. MOCK evidence says so first and last.
pub fn print_verdict(result: Verdict<'_>, mock: bool) {
    let _ = write_verdict(&mut std::io::stdout().lock(), result, mock);
}

/// The same on stderr, for commands whose stdout is the model's answer.
pub fn eprint_verdict(result: Verdict<'_>, mock: bool) {
    let _ = write_verdict(&mut std::io::stderr().lock(), result, mock);
}

fn write_verdict(out: &mut dyn Write, result: Verdict<'_>, mock: bool) -> std::io::Result<()> {
    if mock {
        writeln!(
            out,
            "MOCK evidence: signed by a software mock platform, not by an AMD secure processor"
        )?;
    }
    match result {
        Ok(a) => {
            write_outcomes(out, a.outcomes())?;
            if let Some(vtpm) = a.vtpm() {
                write_pcrs(out, vtpm)?;
            }
        }
        Err(r) => write_outcomes(out, &r.outcomes)?,
    }
    writeln!(out, "{}", verdict_line(result, mock))
}

/// The verdict in one line: `VERIFIED (MOCK): Milan report v3, signed by the VCEK`, or
/// `REJECTED: 2 check(s) failed: measurement, tcb`. MOCK evidence always says MOCK.
pub fn verdict_line(result: Verdict<'_>, mock: bool) -> String {
    match result {
        Ok(a) => {
            let tag = if mock { "VERIFIED (MOCK)" } else { "VERIFIED" };
            let via = if a.vtpm().is_some() {
                " (az-snp-vtpm: Azure paravisor, vTPM quote)"
            } else {
                ""
            };
            format!(
                "{tag}: {} report v{}, signed by the {}{via}",
                a.product(),
                a.report().version(),
                a.signing_key()
            )
        }
        Err(r) => {
            let failed: Vec<&str> = r.failures().map(|o| o.check.name()).collect();
            let tag = if mock { "REJECTED (MOCK)" } else { "REJECTED" };
            format!(
                "{tag}: {} check(s) failed: {}",
                failed.len(),
                failed.join(", ")
            )
        }
    }
}

/// For `ask`, `chat` and `proxy`, on stderr: with `verbose` the whole table; otherwise
/// the one line naming `url` (and, for a rejection, the failed checks under it).
pub fn report_verification(result: Verdict<'_>, mock: bool, url: &str, verbose: bool) {
    if verbose {
        eprint_verdict(result, mock);
        return;
    }
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "veil: {} ({url})", verdict_line(result, mock));
    if let Err(r) = result {
        let failed: Vec<Outcome> = r.failures().cloned().collect();
        let _ = write_outcomes(&mut err, &failed);
        let _ = writeln!(err, "veil: --verbose shows every check");
    }
}

/// Prints the quoted PCRs of az-snp-vtpm evidence, one per line.
pub fn print_pcrs(vtpm: &VtpmClaims) {
    let _ = write_pcrs(&mut std::io::stdout().lock(), vtpm);
}

fn write_pcrs(out: &mut dyn Write, vtpm: &VtpmClaims) -> std::io::Result<()> {
    writeln!(out, "PCRs (SHA-256 bank, quoted):")?;
    for (index, value) in vtpm.pcrs() {
        writeln!(out, "  {index:2}  {}", hex::encode(value))?;
    }
    Ok(())
}

/// What the vTPM quote verified, as JSON: the PCRs by index, the nonce, the user data.
pub fn vtpm_json(vtpm: &VtpmClaims) -> serde_json::Value {
    let pcrs: serde_json::Map<String, serde_json::Value> = vtpm
        .pcrs()
        .iter()
        .map(|(i, v)| (i.to_string(), serde_json::Value::String(hex::encode(v))))
        .collect();
    json!({
        "pcrs": pcrs,
        "extra_data": hex::encode(vtpm.extra_data()),
        "user_data": vtpm.user_data(),
        "ak_sha256": hex::encode(vtpm.ak_fingerprint()),
    })
}

/// What the report claims, as JSON (the same fields `veil verify` prints).
pub fn claims(r: &Report) -> serde_json::Value {
    json!({
        "measurement": hex::encode(r.measurement()),
        "report_data": hex::encode(r.report_data()),
        "host_data": hex::encode(r.host_data()),
        "chip_id": hex::encode(r.chip_id()),
        "vmpl": r.vmpl(),
        "guest_svn": r.guest_svn(),
        "policy": format!("{:#x}", r.policy()),
        "version": r.version(),
    })
}

/// Prints the report's claims, one per line.
pub fn print_claims(r: &Report) {
    println!("claims:");
    if let serde_json::Value::Object(map) = claims(r) {
        for (name, value) in map {
            match value {
                serde_json::Value::String(s) => println!("  {name:12} {s}"),
                other => println!("  {name:12} {other}"),
            }
        }
    }
}

/// The verdict as JSON: `verified`, `mock`, every check, the failed ones, and the claims.
pub fn verdict_json(result: Verdict<'_>, report: Option<&Report>, mock: bool) -> serde_json::Value {
    let (outcomes, verified) = match result {
        Ok(a) => (a.outcomes(), true),
        Err(r) => (r.outcomes.as_slice(), false),
    };
    let failed: Vec<&str> = outcomes
        .iter()
        .filter(|o| o.failed())
        .map(|o| o.check.name())
        .collect();
    let claims = report.map(claims);
    let tee = match result {
        Ok(a) => a.tee().to_string(),
        Err(_) if mock => "MOCK".to_owned(),
        Err(_) => "snp".to_owned(),
    };
    json!({
        "verified": verified,
        "mock": mock,
        "tee": tee,
        "vtpm": result.ok().and_then(|a| a.vtpm()).map(vtpm_json),
        "product": result.ok().map(|a| a.product().to_string()),
        "failed": failed,
        "checks": outcomes,
        "claims": claims,
    })
}

use std::collections::BTreeMap;
use std::time::SystemTime;

use super::fake::{FakeMode, FakeTsm};
use super::*;
use crate::binding::{Nonce, Purpose, Transcript};
use crate::mock::{MockLaunch, MockPlatform};
use crate::{Expected, Policy};

fn launch() -> MockLaunch {
    MockLaunch::new(b"veil-server", BTreeMap::new())
}

fn fake(mode: FakeMode) -> FakeTsm {
    let platform = MockPlatform::generate(SystemTime::now()).expect("mock platform");
    FakeTsm::new(platform, launch()).with_mode(mode)
}

/// Runs one report against `fake` and checks the entry was removed.
fn run(fake: &FakeTsm) -> Result<Evidence, TsmError> {
    let attester = TsmAttester::new(fake, 0).expect("vmpl 0");
    let out = attester.tsm_report([0x5a; 64]);
    assert!(fake.live_entries().is_empty(), "entry left behind: {out:?}");
    let log = fake.log();
    if log.len() > 1 {
        assert!(
            log.last().is_some_and(|l| l.starts_with("rmdir ")),
            "{log:?}"
        );
    }
    out
}

#[test]
fn produces_evidence_that_appraises_under_the_mock_root() {
    let fake = fake(FakeMode::Normal);
    let transcript = Transcript {
        purpose: Purpose::ClientSession,
        nonce: Nonce::random::<32>(),
        spki_sha256: [1; 32],
        exporter: Some([2; 32]),
        wrap_pk: [3; 32],
        model_sha256: [4; 32],
        receipt_pk: [5; 32],
    };
    let attester = TsmAttester::new(&fake, 0).expect("vmpl 0");
    let evidence = attester.attest(&transcript).expect("evidence");
    // Its VEK is issued by SEV-Mock: labelled MOCK, appraised under the mock root.
    assert_eq!(evidence.tee, TeeKind::Mock);
    assert_eq!(evidence.certificates.len(), 3);
    assert_eq!(evidence.certificates[0], fake.platform().vcek().as_der());
    assert_eq!(
        evidence.certificates[1],
        fake.platform().intermediate().as_der()
    );
    assert_eq!(evidence.certificates[2], fake.platform().root().as_der());
    assert!(fake.live_entries().is_empty());
    assert_eq!(fake.reports_made(), 1);

    let policy = Policy::mock(fake.platform().root(), &[launch().measurement()]);
    let now = SystemTime::now();
    policy
        .appraise(&evidence, &Expected::new(&transcript, now))
        .expect("appraises");
}

#[test]
fn follows_the_kernel_protocol_in_order() {
    let fake = fake(FakeMode::Normal);
    run(&fake).expect("evidence");
    let log: Vec<String> = fake
        .log()
        .iter()
        .map(|l| {
            // Drop the entry name: `op NAME/attr` -> `op attr`.
            let (op, rest) = l.split_once(' ').expect("op and path");
            let attr = rest.split_once('/').map_or("", |(_, a)| a);
            format!("{op} {attr}").trim_end().to_owned()
        })
        .collect();
    assert_eq!(
        log,
        [
            "mkdir",
            "read provider",
            "read privlevel_floor",
            "read generation",
            "write inblob 64",
            "write privlevel 1",
            "read outblob",
            "read auxblob",
            "read generation",
            "rmdir",
        ]
    );
}

#[test]
fn requests_the_vmpl_it_was_given() {
    let fake = fake(FakeMode::Normal);
    let attester = TsmAttester::new(&fake, 2).expect("vmpl 2");
    let evidence = attester.tsm_report([1; 64]).expect("evidence");
    assert_eq!(evidence.parsed_report().expect("report").vmpl(), 2);
    assert!(fake.log().iter().any(|l| l.ends_with("/privlevel 1")));
}

#[test]
fn names_each_entry_uniquely() {
    let (a, b) = (entry_name(), entry_name());
    assert_ne!(a, b);
    assert!(a.starts_with("veil-"));
}

#[test]
fn returns_evidence_without_certificates_when_the_host_gives_none() {
    let evidence = run(&fake(FakeMode::NoCertificates)).expect("no certificates is normal");
    assert!(evidence.certificates.is_empty());
    // Nothing says it is mock: labelled SNP, so only an AMD chain the verifier finds can
    // pass it.
    assert_eq!(evidence.tee, TeeKind::Snp);
    assert_eq!(
        evidence.parsed_report().expect("report").report_data(),
        [0x5a; 64]
    );
}

#[test]
fn reports_enxio_as_no_provider() {
    let err = run(&fake(FakeMode::NoProvider)).unwrap_err();
    assert!(matches!(err, TsmError::NoProvider), "{err}");
    assert!(err.to_string().contains("is the sev-guest driver loaded?"));
}

#[test]
fn rejects_another_provider() {
    let err = run(&fake(FakeMode::Provider("tdx_guest".into()))).unwrap_err();
    assert!(
        matches!(&err, TsmError::WrongProvider { found } if found == "tdx_guest"),
        "{err}"
    );
}

#[test]
fn rejects_a_generation_moved_by_another_writer() {
    let err = run(&fake(FakeMode::RacingWriter)).unwrap_err();
    assert!(
        matches!(
            err,
            TsmError::GenerationRaced {
                before: 0,
                after: 3,
                writes: 2
            }
        ),
        "{err}"
    );
}

#[test]
fn reports_ebusy_as_busy() {
    let err = run(&fake(FakeMode::Busy)).unwrap_err();
    assert!(
        matches!(
            err,
            TsmError::Busy {
                op: "read",
                attr: "outblob"
            }
        ),
        "{err}"
    );
    // EAGAIN too.
    assert!(matches!(
        TsmError::io(
            "write",
            "inblob",
            io::Error::from_raw_os_error(errno::EAGAIN)
        ),
        TsmError::Busy { .. }
    ));
    // ENXIO past mkdir is an ordinary I/O error.
    assert!(matches!(
        TsmError::io(
            "read",
            "outblob",
            io::Error::from_raw_os_error(errno::ENXIO)
        ),
        TsmError::Io { .. }
    ));
}

#[test]
fn rejects_a_short_outblob() {
    let err = run(&fake(FakeMode::ShortReads)).unwrap_err();
    assert!(
        matches!(
            err,
            TsmError::NotAReport(ReportError::Length { found: 592 })
        ),
        "{err}"
    );
}

#[test]
fn rejects_an_empty_outblob() {
    let err = run(&fake(FakeMode::EmptyOutblob)).unwrap_err();
    assert!(
        matches!(err, TsmError::EmptyRead { attr: "outblob" }),
        "{err}"
    );
}

#[test]
fn rejects_a_report_for_other_report_data() {
    let err = run(&fake(FakeMode::WrongReportData)).unwrap_err();
    assert!(matches!(err, TsmError::ReportDataMismatch), "{err}");
}

#[test]
fn rejects_a_malformed_auxblob() {
    let platform = MockPlatform::generate(SystemTime::now()).expect("mock platform");
    let table = FakeTsm::mock_table(&platform).to_bytes();
    let truncated = table[..table.len() - 1].to_vec();
    let fake = FakeTsm::new(platform, launch()).with_mode(FakeMode::Auxblob(truncated));
    let err = run(&fake).unwrap_err();
    assert!(
        matches!(err, TsmError::CertTable(CertTableError::OutOfBounds { .. })),
        "{err}"
    );
}

#[test]
fn refuses_a_vmpl_below_the_floor_or_above_three() {
    let fake = fake(FakeMode::Normal).with_privlevel_floor(1);
    let attester = TsmAttester::new(&fake, 0).expect("vmpl 0");
    let err = attester.tsm_report([0; 64]).unwrap_err();
    assert!(
        matches!(err, TsmError::Privlevel { vmpl: 0, floor: 1 }),
        "{err}"
    );
    assert!(fake.live_entries().is_empty());
    assert!(TsmAttester::new(&fake, 4).is_err());
}

#[test]
fn reports_a_failed_removal_after_a_good_report() {
    let fake = fake(FakeMode::RemoveFails);
    let err = TsmAttester::new(&fake, 0)
        .expect("vmpl 0")
        .tsm_report([0; 64])
        .unwrap_err();
    assert!(matches!(err, TsmError::Remove { .. }), "{err}");
    assert!(fake.log().last().is_some_and(|l| l.starts_with("rmdir ")));
}

#[test]
fn fake_refuses_reads_before_inblob_and_wrong_sizes() {
    let fake = fake(FakeMode::Normal);
    fake.create_dir("e").expect("mkdir");
    let einval = |r: io::Result<Vec<u8>>| r.unwrap_err().raw_os_error() == Some(errno::EINVAL);
    assert!(einval(fake.read("e", "outblob")));
    assert!(einval(fake.read("e", "auxblob")));
    fake.write("e", "inblob", &[1; 10])
        .expect("short inblob is stored");
    assert!(
        einval(fake.read("e", "outblob")),
        "sev_guest wants 64 bytes"
    );
    assert!(fake.write("e", "inblob", &[1; 65]).is_err());
    assert!(fake.write("e", "privlevel", b"4").is_err());
    assert!(fake.write("e", "generation", b"0").is_err());
    fake.write("e", "inblob", &[1; 64]).expect("inblob");
    assert_eq!(fake.read("e", "generation").expect("generation"), b"2\n");
    let first = fake.read("e", "outblob").expect("outblob");
    assert_eq!(
        fake.read("e", "outblob").expect("cached"),
        first,
        "cached while generation stays"
    );
    assert_eq!(fake.reports_made(), 1);
    fake.write("e", "inblob", &[2; 64]).expect("inblob");
    assert_ne!(fake.read("e", "outblob").expect("new report"), first);
    assert_eq!(fake.reports_made(), 2);
    assert!(fake.create_dir("e").is_err(), "EEXIST");
    fake.remove_dir("e").expect("rmdir");
    assert!(fake.remove_dir("e").is_err(), "ENOENT");
}

/// The real-filesystem implementation over a temporary directory standing in for
/// configfs: it opens attributes without creating them and reads them whole.
#[test]
fn configfs_reads_and_writes_attributes_under_its_root() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fs = ConfigFsTsm::new(dir.path());
    assert!(fs.is_present());
    assert!(!ConfigFsTsm::new(dir.path().join("absent")).is_present());
    fs.create_dir("e").expect("mkdir");
    // configfs makes the attributes; a tempdir does not, and writing never creates them.
    let err = fs.write("e", "inblob", &[0; 64]).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(errno::ENOENT));
    std::fs::write(dir.path().join("e/inblob"), b"").expect("attr");
    fs.write("e", "inblob", &[9; 64]).expect("write");
    assert_eq!(fs.read("e", "inblob").expect("read"), vec![9; 64]);
    std::fs::remove_file(dir.path().join("e/inblob")).expect("rm");
    fs.remove_dir("e").expect("rmdir");
    assert!(!dir.path().join("e").exists());
}

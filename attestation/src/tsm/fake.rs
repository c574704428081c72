//! An in-memory configfs-tsm with the kernel's semantics, signing with the mock platform.
//!
//! Modelled on `drivers/virt/coco/tsm.c` and the `sev_guest` provider:
//! - `create_dir` makes an entry with `provider`, `generation`, `privlevel_floor`;
//! - every write bumps the entry's `generation`;
//! - `inblob` takes at most 64 bytes, and the `sev_guest` provider wants exactly 64;
//! - `privlevel` takes a decimal 0..=3, not below `privlevel_floor`;
//! - the report is made on the first `outblob`/`auxblob` read after a write, and served
//!   from a cache while the generation stays; a read before any `inblob` fails with EINVAL;
//! - `auxblob` is the certificate table holding the mock VCEK, ASK and ARK.
//!
//! [`FakeMode`] injects the failures a real kernel can show. The reports are signed by the
//! mock platform's keys in the real SNP layout; the attester labels the evidence
//! [`TeeKind::Mock`] because its VEK is issued by `SEV-Mock` (without certificates, it
//! says [`TeeKind::Snp`]: it cannot know).
//!
//! [`TeeKind::Snp`]: crate::TeeKind::Snp
//! [`TeeKind::Mock`]: crate::TeeKind::Mock

use std::collections::BTreeMap;
use std::io;
use std::sync::Mutex;

use super::errno;
use super::TsmFs;
use crate::certtable::{CertEntry, CertKind, CertTable};
use crate::mock::{MockLaunch, MockPlatform};

/// A failure the fake injects.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum FakeMode {
    /// The kernel's behaviour, nothing injected.
    #[default]
    Normal,
    /// No provider registered: `mkdir` fails with ENXIO.
    NoProvider,
    /// `provider` reads this (e.g. `tdx_guest`).
    Provider(String),
    /// Another writer: each report made bumps `generation` once more behind the attester.
    RacingWriter,
    /// `outblob` reads back short (its first half).
    ShortReads,
    /// `outblob` reads back empty.
    EmptyOutblob,
    /// Reading `outblob` fails with EBUSY.
    Busy,
    /// The host gave no certificates: `auxblob` is empty.
    NoCertificates,
    /// `auxblob` reads back these bytes.
    Auxblob(Vec<u8>),
    /// The report answers REPORT_DATA other than what `inblob` holds.
    WrongReportData,
    /// `rmdir` fails with EBUSY.
    RemoveFails,
}

#[derive(Debug, Default)]
struct Entry {
    generation: u64,
    inblob: Option<Vec<u8>>,
    privlevel: u32,
    /// The report made at `generation`: (generation, outblob, auxblob).
    cached: Option<(u64, Vec<u8>, Vec<u8>)>,
}

#[derive(Debug, Default)]
struct State {
    entries: BTreeMap<String, Entry>,
    log: Vec<String>,
    reports: usize,
}

/// The fake configfs-tsm report directory.
#[derive(Debug)]
pub struct FakeTsm {
    platform: MockPlatform,
    launch: MockLaunch,
    mode: FakeMode,
    floor: u32,
    state: Mutex<State>,
}

fn os(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

impl FakeTsm {
    /// A fake whose reports are `launch` signed by `platform`.
    pub fn new(platform: MockPlatform, launch: MockLaunch) -> Self {
        FakeTsm {
            platform,
            launch,
            mode: FakeMode::Normal,
            floor: 0,
            state: Mutex::new(State::default()),
        }
    }

    /// The same fake, injecting `mode`.
    pub fn with_mode(mut self, mode: FakeMode) -> Self {
        self.mode = mode;
        self
    }

    /// The same fake, with this `privlevel_floor`.
    pub fn with_privlevel_floor(mut self, floor: u32) -> Self {
        self.floor = floor;
        self
    }

    /// The mock platform that signs.
    pub fn platform(&self) -> &MockPlatform {
        &self.platform
    }

    /// Entries that exist now (an attester leaves none behind).
    pub fn live_entries(&self) -> Vec<String> {
        self.lock().entries.keys().cloned().collect()
    }

    /// Every operation so far, e.g. `mkdir NAME`, `write NAME/inblob 64`, `rmdir NAME`.
    pub fn log(&self) -> Vec<String> {
        self.lock().log.clone()
    }

    /// How many reports the fake has made.
    pub fn reports_made(&self) -> usize {
        self.lock().reports
    }

    /// The certificate table of the mock platform's VCEK, ASK and ARK.
    pub fn mock_table(platform: &MockPlatform) -> CertTable {
        CertTable::new(vec![
            CertEntry::new(CertKind::Vcek, platform.vcek().as_der().to_vec()),
            CertEntry::new(CertKind::Ask, platform.intermediate().as_der().to_vec()),
            CertEntry::new(CertKind::Ark, platform.root().as_der().to_vec()),
        ])
        .expect("three distinct, non-empty certificates")
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn render(&self, entry: &mut Entry) -> io::Result<(Vec<u8>, Vec<u8>)> {
        if let Some((generation, out, aux)) = &entry.cached {
            if *generation == entry.generation {
                return Ok((out.clone(), aux.clone()));
            }
        }
        // sev_report_new: exactly 64 bytes of inblob, else EINVAL.
        let inblob = entry.inblob.as_ref().ok_or_else(|| os(errno::EINVAL))?;
        let mut report_data: [u8; 64] = inblob
            .as_slice()
            .try_into()
            .map_err(|_| os(errno::EINVAL))?;
        if self.mode == FakeMode::WrongReportData {
            report_data[0] ^= 1;
        }
        let mut launch = self.launch.clone();
        launch.vmpl = entry.privlevel;
        let out = self
            .platform
            .sign_report(&launch, report_data)
            .as_bytes()
            .to_vec();
        let aux = match &self.mode {
            FakeMode::NoCertificates => Vec::new(),
            FakeMode::Auxblob(bytes) => bytes.clone(),
            _ => Self::mock_table(&self.platform).to_bytes(),
        };
        if self.mode == FakeMode::RacingWriter {
            entry.generation += 1;
        }
        entry.cached = Some((entry.generation, out.clone(), aux.clone()));
        Ok((out, aux))
    }
}

impl TsmFs for FakeTsm {
    fn is_present(&self) -> bool {
        true
    }

    fn create_dir(&self, name: &str) -> io::Result<()> {
        let mut state = self.lock();
        state.log.push(format!("mkdir {name}"));
        if self.mode == FakeMode::NoProvider {
            return Err(os(errno::ENXIO));
        }
        if state.entries.contains_key(name) {
            return Err(os(errno::EEXIST));
        }
        state.entries.insert(name.to_owned(), Entry::default());
        Ok(())
    }

    fn remove_dir(&self, name: &str) -> io::Result<()> {
        let mut state = self.lock();
        state.log.push(format!("rmdir {name}"));
        if self.mode == FakeMode::RemoveFails {
            return Err(os(errno::EBUSY));
        }
        state
            .entries
            .remove(name)
            .map(|_| ())
            .ok_or_else(|| os(errno::ENOENT))
    }

    fn write(&self, name: &str, attr: &str, data: &[u8]) -> io::Result<()> {
        let mut state = self.lock();
        state
            .log
            .push(format!("write {name}/{attr} {}", data.len()));
        let floor = self.floor;
        let entry = state
            .entries
            .get_mut(name)
            .ok_or_else(|| os(errno::ENOENT))?;
        match attr {
            "inblob" => {
                if data.len() > 64 {
                    return Err(os(errno::EINVAL));
                }
                entry.inblob = Some(data.to_vec());
            }
            "privlevel" => {
                let level: u32 = std::str::from_utf8(data)
                    .ok()
                    .and_then(|s| s.trim().parse().ok())
                    .ok_or_else(|| os(errno::EINVAL))?;
                if level > 3 || level < floor {
                    return Err(os(errno::EINVAL));
                }
                entry.privlevel = level;
            }
            "outblob" | "auxblob" | "generation" | "provider" | "privlevel_floor" => {
                return Err(os(errno::EACCES))
            }
            _ => return Err(os(errno::ENOENT)),
        }
        entry.generation += 1;
        Ok(())
    }

    fn read(&self, name: &str, attr: &str) -> io::Result<Vec<u8>> {
        let mut state = self.lock();
        state.log.push(format!("read {name}/{attr}"));
        let mut made = false;
        let entry = state
            .entries
            .get_mut(name)
            .ok_or_else(|| os(errno::ENOENT))?;
        let out = match attr {
            "provider" => match &self.mode {
                FakeMode::Provider(p) => format!("{p}\n").into_bytes(),
                _ => b"sev_guest\n".to_vec(),
            },
            "generation" => format!("{}\n", entry.generation).into_bytes(),
            "privlevel_floor" => format!("{}\n", self.floor).into_bytes(),
            "outblob" | "auxblob" => {
                if attr == "outblob" && self.mode == FakeMode::Busy {
                    return Err(os(errno::EBUSY));
                }
                let fresh = !matches!(&entry.cached, Some((g, _, _)) if *g == entry.generation);
                let (out, aux) = self.render(entry)?;
                made = fresh;
                if attr == "auxblob" {
                    aux
                } else {
                    match self.mode {
                        FakeMode::ShortReads => out[..out.len() / 2].to_vec(),
                        FakeMode::EmptyOutblob => Vec::new(),
                        _ => out,
                    }
                }
            }
            "inblob" | "privlevel" => return Err(os(errno::EACCES)),
            _ => return Err(os(errno::ENOENT)),
        };
        if made {
            state.reports += 1;
        }
        Ok(out)
    }
}

//! Keeping the weights (and keys) out of core dumps and other processes: what start-up
//! does before anything secret is in memory, and what it reports.
//!
//! - `PR_SET_DUMPABLE` 0: no core dump, and `/proc/PID` files (memory, descriptors) are
//!   root's and closed to ptrace by the same user.
//! - `RLIMIT_CORE` 0 (soft and hard): no core file even if dumpable were set again.
//! - `/proc/self/coredump_filter` without the shared-memory bits: the model's memfd is a
//!   shared mapping of anonymous memory, so a core dumped anyway (by a `core_pattern` pipe
//!   that ignores the limit) leaves it out. This stands in for `MADV_DONTDUMP` on the
//!   mapping, which llama.cpp makes and which would need `unsafe` here.
//!
//! The model's memfd is sealed once filled (`veil_model::ModelFile::seal`) and its mapping
//! locked in memory where `RLIMIT_MEMLOCK` allows (`EngineConfig::lock_memory`); the
//! unlock pipeline records those outcomes beside these in `/metrics` (`veil_hardening`).

use crate::metrics::Metrics;

/// Shared-memory bits of `coredump_filter` (proc(5)): anonymous shared (1), file-backed
/// shared (3), hugetlb shared (6), DAX shared (8).
const SHARED_MEMORY_BITS: u32 = (1 << 1) | (1 << 3) | (1 << 6) | (1 << 8);

/// What [`harden_process`] achieved, each as read back from the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hardening {
    /// `PR_GET_DUMPABLE` says 0.
    pub not_dumpable: bool,
    /// `RLIMIT_CORE` is 0, soft and hard.
    pub core_limit_zero: bool,
    /// `coredump_filter` has no shared-memory bit.
    pub shared_memory_not_dumped: bool,
}

impl Hardening {
    /// Records each measure in `veil_hardening`.
    pub fn record(&self, metrics: &Metrics) {
        metrics.set_hardening("not_dumpable", self.not_dumpable);
        metrics.set_hardening("core_limit_zero", self.core_limit_zero);
        metrics.set_hardening("shared_memory_not_dumped", self.shared_memory_not_dumped);
    }
}

/// Makes this process not dumpable, sets its core size limit to 0 and drops shared memory
/// from its core-dump filter; logs each outcome (a warning for each that did not hold) and
/// returns them. Never fails: a measure that cannot be applied is reported, not fatal.
pub fn harden_process() -> Hardening {
    use rustix::process::{
        dumpable_behavior, getrlimit, set_dumpable_behavior, setrlimit, DumpableBehavior, Resource,
        Rlimit,
    };
    if let Err(e) = set_dumpable_behavior(DumpableBehavior::NotDumpable) {
        tracing::warn!(error = %e, "PR_SET_DUMPABLE 0 failed");
    }
    let not_dumpable = matches!(dumpable_behavior(), Ok(DumpableBehavior::NotDumpable));
    let zero = Rlimit {
        current: Some(0),
        maximum: Some(0),
    };
    if let Err(e) = setrlimit(Resource::Core, zero) {
        tracing::warn!(error = %e, "RLIMIT_CORE 0 failed");
    }
    let core = getrlimit(Resource::Core);
    let core_limit_zero = core.current == Some(0) && core.maximum == Some(0);
    let shared_memory_not_dumped = match filter_shared_memory() {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(error = %e, "coredump_filter could not be set");
            false
        }
    };
    let h = Hardening {
        not_dumpable,
        core_limit_zero,
        shared_memory_not_dumped,
    };
    if not_dumpable && core_limit_zero && shared_memory_not_dumped {
        tracing::info!(
            "core dumps off: not dumpable, RLIMIT_CORE 0, shared memory out of coredump_filter"
        );
    } else {
        tracing::warn!(
            not_dumpable,
            core_limit_zero,
            shared_memory_not_dumped,
            "core dumps could not be fully turned off"
        );
    }
    h
}

/// Clears [`SHARED_MEMORY_BITS`] in `/proc/self/coredump_filter` and checks it.
fn filter_shared_memory() -> std::io::Result<()> {
    const PATH: &str = "/proc/self/coredump_filter";
    let read = || -> std::io::Result<u32> {
        let text = std::fs::read_to_string(PATH)?;
        u32::from_str_radix(text.trim(), 16)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    };
    let filter = read()? & !SHARED_MEMORY_BITS;
    std::fs::write(PATH, format!("{filter:#x}"))?;
    if read()? & SHARED_MEMORY_BITS != 0 {
        return Err(std::io::Error::other(
            "the shared-memory bits are still set",
        ));
    }
    Ok(())
}

/// Bytes of this process locked in memory: `VmLck` of `/proc/self/status`.
pub fn locked_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmLck:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse::<u64>()
        .ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hardening_makes_the_process_not_dumpable_with_no_core_limit() {
        // The test process itself: it has no secrets, and nothing here needs a core.
        let h = harden_process();
        assert!(h.not_dumpable, "{h:?}");
        assert!(h.core_limit_zero, "{h:?}");
        assert_eq!(
            rustix::process::dumpable_behavior().expect("prctl"),
            rustix::process::DumpableBehavior::NotDumpable
        );
        let limits = std::fs::read_to_string("/proc/self/limits").expect("limits");
        let core = limits
            .lines()
            .find(|l| l.starts_with("Max core file size"))
            .expect("a core line");
        assert_eq!(core.split_whitespace().nth(4), Some("0"), "{core}");
        assert_eq!(core.split_whitespace().nth(5), Some("0"), "{core}");
        let m = Metrics::default();
        h.record(&m);
        assert!(m
            .render("locked", 0)
            .contains("veil_hardening{measure=\"not_dumpable\"} 1\n"));
    }

    #[test]
    fn locked_bytes_are_read_from_proc() {
        assert!(locked_bytes().is_some());
    }
}

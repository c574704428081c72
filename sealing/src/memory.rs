//! Memory for plaintext weights.
//!
//! # Safety
//! The two `unsafe` calls here are `madvise`, with advice that changes how the kernel
//! treats pages, never their contents or their validity: `MADV_HUGEPAGE` on memory this
//! module has just allocated and still owns (2 MiB pages, so a 2 GiB model takes ~1000
//! page faults instead of ~500 000), and `MADV_DONTDUMP` on mappings the kernel lists in
//! `/proc/self/maps` (a core dump leaves them out).
#![allow(unsafe_code)]

use zeroize::Zeroizing;

/// A zeroed buffer of `len` bytes, backed by transparent huge pages where the kernel
/// allows it, zeroized when dropped.
pub(crate) fn plaintext_buffer(len: usize) -> Zeroizing<Vec<u8>> {
    let mut buf = Zeroizing::new(vec![0u8; len]);
    const HUGE: usize = 2 << 20;
    let start = buf.as_mut_ptr() as usize;
    let aligned = start.next_multiple_of(HUGE);
    let end = (start + len) & !(HUGE - 1);
    if end > aligned {
        // SAFETY: [aligned, end) lies inside `buf`'s allocation, which lives until this
        // function returns it; MADV_HUGEPAGE only advises the kernel on the backing of
        // these pages and cannot change their contents or invalidate the mapping.
        let advised = unsafe {
            rustix::mm::madvise(
                aligned as *mut core::ffi::c_void,
                end - aligned,
                rustix::mm::Advice::LinuxHugepage,
            )
        };
        // Without THP the buffer works the same, only with more page faults.
        let _ = advised;
    }
    buf
}

/// Leaves every mapping of the memfd named `name` (`/memfd:NAME` in `/proc/self/maps`)
/// out of core dumps (`MADV_DONTDUMP`); returns the bytes so marked. Call it once the
/// engine has mapped the weights.
///
/// # Errors
/// If `/proc/self/maps` cannot be read or `madvise` fails.
pub fn exclude_memfd_from_core_dumps(name: &str) -> std::io::Result<u64> {
    let maps = std::fs::read_to_string("/proc/self/maps")?;
    let needle = format!("/memfd:{name}");
    let mut marked = 0u64;
    for line in maps.lines() {
        // "start-end perms offset dev inode path": the path is the sixth field.
        let mut fields = line.split_whitespace();
        let range = fields.next().unwrap_or_default();
        let Some(path) = fields.nth(4) else { continue };
        if !path.starts_with(&needle) {
            continue;
        }
        let Some((start, end)) = range.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end)) = (
            usize::from_str_radix(start, 16),
            usize::from_str_radix(end, 16),
        ) else {
            continue;
        };
        // SAFETY: MADV_DONTDUMP sets a flag that only the core dumper reads; it neither
        // touches the pages nor changes the mapping, so it is sound on any range of this
        // process, and on one unmapped meanwhile it fails with ENOMEM.
        unsafe {
            rustix::mm::madvise(
                start as *mut core::ffi::c_void,
                end - start,
                rustix::mm::Advice::LinuxDontDump,
            )
        }?;
        marked += (end - start) as u64;
    }
    Ok(marked)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mapped_memfd_is_marked_not_to_be_dumped() {
        use std::io::Write as _;
        let fd = rustix::fs::memfd_create("veil-dontdump-test", rustix::fs::MemfdFlags::CLOEXEC)
            .expect("memfd");
        let mut file = std::fs::File::from(fd);
        file.write_all(&[7u8; 8192]).expect("written");
        // Mapped as the engine maps the weights: read-only, shared, through /proc/self/fd.
        let path = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&file));
        let mapped = std::fs::File::open(path).expect("reopened");
        // SAFETY: a fresh read-only shared mapping of a file this test owns, unmapped
        // below; nothing reads it through a reference.
        let addr = unsafe {
            rustix::mm::mmap(
                core::ptr::null_mut(),
                8192,
                rustix::mm::ProtFlags::READ,
                rustix::mm::MapFlags::SHARED,
                &mapped,
                0,
            )
        }
        .expect("mapped");
        assert_eq!(
            exclude_memfd_from_core_dumps("veil-dontdump-test").expect("advised"),
            8192
        );
        let smaps = std::fs::read_to_string("/proc/self/smaps").expect("smaps");
        let flags = smaps
            .split("\n")
            .skip_while(|l| !l.contains("/memfd:veil-dontdump-test"))
            .find_map(|l| l.strip_prefix("VmFlags:"))
            .expect("the mapping's flags");
        assert!(
            flags.split_whitespace().any(|f| f == "dd"),
            "VmFlags:{flags}"
        );
        assert_eq!(
            exclude_memfd_from_core_dumps("no-such-memfd").expect("nothing"),
            0
        );
        // SAFETY: the mapping made above, not used after this.
        unsafe { rustix::mm::munmap(addr, 8192) }.expect("unmapped");
    }
}

//! Memory for plaintext weights.
//!
//! # Safety
//! The one `unsafe` call here is `madvise(MADV_HUGEPAGE)` on memory this module has just
//! allocated and still owns: it changes how the kernel backs the pages (2 MiB pages, so a
//! 2 GiB model takes ~1000 page faults instead of ~500 000), never their contents or
//! their validity.
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

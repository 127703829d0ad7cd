//! Weight storage backed by transparent huge pages where the kernel allows it (Linux
//! `madvise(MADV_HUGEPAGE)`): decoding streams every weight byte once per token, and with 4 KiB
//! pages that is one TLB miss per 4 KiB read.

use std::ops::{Deref, DerefMut};

/// A zero-initialised byte buffer, huge-page backed on Linux for large sizes.
pub struct HugeBuf {
    ptr: *mut u8,
    len: usize,
    /// Mapped length (0 when the buffer is a plain heap allocation in `fallback`).
    mapped: usize,
    fallback: Vec<u8>,
}

// SAFETY: HugeBuf owns its memory exclusively, like a Vec<u8>, so it may move to another thread.
unsafe impl Send for HugeBuf {}
// SAFETY: a shared `&HugeBuf` only reads the bytes (`as_slice`); writing needs `&mut`.
unsafe impl Sync for HugeBuf {}

const HUGE: usize = 2 << 20;

impl HugeBuf {
    pub fn zeroed(len: usize) -> Self {
        #[cfg(target_os = "linux")]
        if len >= HUGE {
            let mapped = len.div_ceil(HUGE) * HUGE;
            // SAFETY: anonymous private mapping; checked for failure below.
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    mapped,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            if p != libc::MAP_FAILED {
                // Advisory only: without THP support this is a no-op.
                // SAFETY: p..p+mapped is the mapping just created.
                unsafe { libc::madvise(p, mapped, libc::MADV_HUGEPAGE) };
                return Self { ptr: p as *mut u8, len, mapped, fallback: Vec::new() };
            }
        }
        let mut fallback = vec![0u8; len];
        Self { ptr: fallback.as_mut_ptr(), len, mapped: 0, fallback }
    }
}

impl Deref for HugeBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        if self.mapped == 0 {
            return &self.fallback;
        }
        // SAFETY: ptr is a live mapping of at least len bytes.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl DerefMut for HugeBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        if self.mapped == 0 {
            return &mut self.fallback;
        }
        // SAFETY: ptr is a live mapping of at least len bytes, uniquely borrowed.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for HugeBuf {
    fn drop(&mut self) {
        #[cfg(target_os = "linux")]
        if self.mapped > 0 {
            // SAFETY: unmapping exactly the mapping created in `zeroed`.
            unsafe { libc::munmap(self.ptr as *mut libc::c_void, self.mapped) };
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn small_and_large_buffers_read_back() {
        for len in [10usize, (2 << 20) + 5] {
            let mut b = super::HugeBuf::zeroed(len);
            assert_eq!(b.len(), len);
            assert!(b.iter().all(|&x| x == 0));
            b[len - 1] = 7;
            assert_eq!(b[len - 1], 7);
        }
    }
}

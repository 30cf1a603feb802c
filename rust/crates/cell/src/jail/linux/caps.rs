//! This process's capability sets, read and written whole (`capget(2)` /
//! `capset(2)`, version 3: two 32-bit words per set). Used by the exec
//! helper to drop and by the user-namespace set-up to raise; every function
//! here is a plain syscall, safe between fork and exec.

use std::io;

/// `struct __user_cap_header_struct` of `<linux/capability.h>`.
#[repr(C)]
struct Header {
    version: u32,
    pid: libc::c_int,
}

/// `struct __user_cap_data_struct`: one 32-bit word of each set.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub(super) struct Word {
    pub effective: u32,
    pub permitted: u32,
    pub inheritable: u32,
}

/// All three sets, capabilities 0–63.
pub(super) type Sets = [Word; 2];

const VERSION_3: u32 = 0x2008_0522;

fn header() -> Header {
    Header {
        version: VERSION_3,
        pid: 0,
    }
}

/// The word and bit of capability `cap` in [`Sets`].
pub(super) fn bit(cap: u32) -> (usize, u32) {
    ((cap / 32) as usize, 1 << (cap % 32))
}

pub(super) fn get() -> io::Result<Sets> {
    let mut sets = Sets::default();
    // SAFETY: a version-3 header and the two words it fills.
    if unsafe { libc::syscall(libc::SYS_capget, &mut header(), sets.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(sets)
}

pub(super) fn set(sets: &Sets) -> io::Result<()> {
    // SAFETY: a version-3 header and the two words it reads.
    if unsafe { libc::syscall(libc::SYS_capset, &mut header(), sets.as_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

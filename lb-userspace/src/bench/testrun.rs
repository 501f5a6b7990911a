//! The timed loop's one call: `BPF_PROG_TEST_RUN` on a prepared attribute block with a reused
//! output buffer. The kernel's duration depends on what the caller does between calls (work in
//! userspace evicts what the timed program needs), so nothing is allocated or converted here;
//! aya's `test_run` allocates and builds its options per call.

use std::os::fd::RawFd;

const BPF_PROG_TEST_RUN: libc::c_long = 10;

/// The `test` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct TestAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

pub struct Runner {
    fd: RawFd,
    out: Vec<u8>,
}

impl Runner {
    /// `fd` must stay open while the runner is used (the `Dataplane` that owns it outlives it).
    pub fn new(fd: RawFd) -> Self {
        Runner {
            fd,
            // Room for any frame plus the largest head growth.
            out: vec![0; 4096],
        }
    }

    /// One run of `frame`: the program's return value and the kernel-measured nanoseconds.
    #[inline]
    pub fn run(&mut self, frame: &[u8]) -> std::io::Result<(u32, u32)> {
        let mut attr = TestAttr {
            prog_fd: self.fd as u32,
            data_size_in: frame.len() as u32,
            data_size_out: self.out.len() as u32,
            data_in: frame.as_ptr() as u64,
            data_out: self.out.as_mut_ptr() as u64,
            repeat: 1,
            ..TestAttr::default()
        };
        // SAFETY: a fully initialised bpf_attr prefix for BPF_PROG_TEST_RUN; the input frame
        // and the output buffer (whose size is given) outlive the call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_PROG_TEST_RUN,
                &mut attr as *mut TestAttr,
                std::mem::size_of::<TestAttr>() as u32,
            )
        };
        if rc < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok((attr.retval, attr.duration))
    }
}

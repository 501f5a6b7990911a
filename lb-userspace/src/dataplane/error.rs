use aya::{
    EbpfError,
    maps::{MapError, xdp::XdpMapError},
    programs::ProgramError,
};

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error(
        "this xlb was built without its XDP programs (XLB_SKIP_EBPF=1); rebuild after `cargo xtask setup`"
    )]
    EmptyObject,
    #[error("loading the XDP object failed: {0}")]
    Load(#[from] EbpfError),
    #[error("the XDP object has no map named {0}: userspace and object are out of step")]
    MissingMap(&'static str),
    #[error("the XDP object has no program named {0}")]
    MissingProgram(&'static str),
    #[error("the kernel rejected program {program}: {source}")]
    Verifier {
        program: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("program operation failed: {source}")]
    Program {
        #[source]
        source: ProgramError,
    },
    #[error("BPF_PROG_TEST_RUN failed: {source}")]
    TestRun {
        #[source]
        source: ProgramError,
    },
    #[error("map operation failed: {0}")]
    Map(#[from] MapError),
    #[error("devmap update failed: {0}")]
    DevMap(#[from] XdpMapError),
    #[error("ring of {0} entries is too large")]
    RingTooLarge(usize),
}

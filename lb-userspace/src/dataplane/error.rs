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
    #[error("nothing pinned at {0}: is the xlb daemon running, and is this its pin_dir?")]
    NothingPinned(String),
    #[error(
        "bpffs is not mounted under {0}: mount it (`mount -t bpf bpf /sys/fs/bpf`). In a network namespace entered with `ip netns exec`, /sys is remounted and bpffs hidden: enter it with `nsenter --net=/run/netns/NAME` instead"
    )]
    NoBpffs(String),
    #[error(
        "another xlb daemon holds {0}: stop it first, or give this one its own [daemon] pin_dir (two daemons on one set of maps would undo each other)"
    )]
    PinDirHeld(String),
    #[error("ring of {0} entries is too large")]
    RingTooLarge(usize),
    #[error(transparent)]
    Adopt(#[from] AdoptError),
    #[error("parsing the embedded XDP object failed: {0}")]
    Parse(String),
    #[error("{op} {path}: {source}")]
    Pin {
        op: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("attaching {program} to {iface}: {source}")]
    Attach {
        program: &'static str,
        iface: String,
        #[source]
        source: ProgramError,
    },
}

/// Why pinned state left by another xlb build cannot be adopted.
#[derive(Debug, thiserror::Error)]
pub enum AdoptError {
    #[error(
        "pinned xlb state in {dir} has layout version {found}, this build uses {expected}: \
         refusing to adopt maps whose meaning changed. Either run the matching xlb build, or \
         drop the old state with `xlb detach --pin-dir {dir}` (forwarding stops until the new \
         daemon attaches, and tracked flows are forgotten)"
    )]
    Version {
        dir: String,
        found: u32,
        expected: u32,
    },
    #[error(
        "pinned map {dir}/{map} has {what} {found}, this build expects {expected}: the map \
         layout changed between builds. Run the matching xlb build, or drop the old state with \
         `xlb detach --pin-dir {dir}`"
    )]
    Shape {
        dir: String,
        map: &'static str,
        what: &'static str,
        found: u32,
        expected: u32,
    },
    #[error("pinned state in {dir} has maps but no layout stamp ({path}); it was not made by xlb")]
    Unstamped { dir: String, path: String },
    #[error("{0}")]
    Io(String),
}

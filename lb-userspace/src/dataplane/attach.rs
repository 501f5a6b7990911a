//! Attaching programs to interfaces through bpf links. A pinned link outlives the daemon, so
//! forwarding continues across a restart; the next daemon swaps its freshly loaded program into
//! the same link with one `BPF_LINK_UPDATE`, which the kernel applies atomically per packet.

use std::path::Path;

use aya::programs::{
    SchedClassifier, TcAttachType, Xdp, XdpMode,
    links::{FdLink, PinnedLink},
    xdp::XdpLink,
};
use lb_common::prog_names;

use super::{Dataplane, DataplaneError};
pub use crate::{config::AttachMode, state::Attached};

impl Dataplane {
    /// Attach `program` to `iface`. With `link_pin`, the link is pinned there; a link already
    /// pinned there gets the new program swapped in without a gap.
    pub fn attach(
        &mut self,
        program: &'static str,
        iface: &str,
        mode: AttachMode,
        link_pin: Option<&Path>,
    ) -> Result<Attached, DataplaneError> {
        let err = |source| DataplaneError::Attach {
            program,
            iface: iface.to_string(),
            source,
        };
        if let Some(path) = link_pin
            && path.exists()
        {
            match self.replace(program, path) {
                Ok(id) => {
                    self.links.insert(iface.to_string(), (program, id));
                    // Flows the replaced forwarder started since the load's copy. The swap is
                    // done: a failed copy is reported, not undone (those flows take the ring,
                    // which is the one they were started on).
                    if self.carry_v4
                        && let Err(e) = self.carry_v4_flows()
                    {
                        tracing::warn!(
                            "{iface}: copying the earlier build's new IPv4 flows after the swap: {e}"
                        );
                    }
                    self.attach_probe(program, iface)?;
                    return Ok(Attached {
                        iface: iface.to_string(),
                        mode,
                        fell_back: false,
                        replaced: true,
                    });
                }
                // A link whose interface went away cannot be updated: start over.
                Err(_) => {
                    let _ = std::fs::remove_file(path);
                }
            }
        }
        let prog = self.program(program)?;
        let (id, used, fell_back) = match mode {
            AttachMode::Generic => (
                prog.attach(iface, XdpMode::Skb).map_err(err)?,
                AttachMode::Generic,
                false,
            ),
            AttachMode::Native => match prog.attach(iface, XdpMode::Driver) {
                Ok(id) => (id, AttachMode::Native, false),
                Err(_) => (
                    prog.attach(iface, XdpMode::Skb).map_err(err)?,
                    AttachMode::Generic,
                    true,
                ),
            },
        };
        let id = match link_pin {
            None => id,
            Some(path) => {
                let link = prog.take_link(id).map_err(err)?;
                let fd: FdLink = link.try_into().map_err(|e| {
                    err(aya::programs::ProgramError::SyscallError(
                        aya::sys::SyscallError {
                            call: "link into fd",
                            io_error: std::io::Error::other(format!("{e}")),
                        },
                    ))
                })?;
                let pinned = fd.pin(path).map_err(|e| DataplaneError::Pin {
                    op: "pin link",
                    path: path.display().to_string(),
                    source: std::io::Error::other(e),
                })?;
                let link =
                    XdpLink::try_from(FdLink::from(pinned)).map_err(|e| DataplaneError::Pin {
                        op: "reopen link",
                        path: path.display().to_string(),
                        source: std::io::Error::other(e),
                    })?;
                // Hand the link back to the program so `detach` can drop this process's fd.
                self.program(program)?.attach_to_link(link).map_err(err)?
            }
        };
        self.links.insert(iface.to_string(), (program, id));
        self.attach_probe(program, iface)?;
        Ok(Attached {
            iface: iface.to_string(),
            mode: used,
            fell_back,
            replaced: false,
        })
    }

    /// With the forwarder, `xlb_probe` on the interface's egress: health probes through the
    /// data path leave the host there.
    fn attach_probe(&mut self, program: &'static str, iface: &str) -> Result<(), DataplaneError> {
        if program != prog_names::FORWARD || self.probe_links.contains_key(iface) {
            return Ok(());
        }
        let probe = self.probe_program()?;
        // Kernels before 6.6 attach through a clsact qdisc (one may exist already); TCX, used
        // from 6.6 on, needs none, and none is added there.
        use aya::util::KernelVersion;
        if KernelVersion::current().is_ok_and(|v| v < KernelVersion::new(6, 6, 0)) {
            let _ = aya::programs::tc::qdisc_add_clsact(iface);
        }
        match probe.attach(iface, TcAttachType::Egress) {
            Ok(id) => {
                self.probe_links.insert(iface.to_string(), id);
            }
            // Forwarding does not depend on it, only `via = "vip"` health checks do: their
            // packets would leave this interface unencapsulated, which the warning says.
            Err(e) => tracing::warn!(
                "{iface}: xlb_probe not attached ({e}); health checks with via = \"vip\" leaving through this interface are not encapsulated and do not test the data path"
            ),
        }
        Ok(())
    }

    fn probe_program(&mut self) -> Result<&mut SchedClassifier, DataplaneError> {
        Ok(self
            .ebpf
            .program_mut(prog_names::PROBE)
            .ok_or(DataplaneError::MissingProgram(prog_names::PROBE))?
            .try_into()?)
    }

    fn detach_probe(&mut self, iface: &str) -> Result<(), DataplaneError> {
        let Some(id) = self.probe_links.remove(iface) else {
            return Ok(());
        };
        self.probe_program()?
            .detach(id)
            .map_err(|source| DataplaneError::Program { source })
    }

    fn replace(
        &mut self,
        program: &'static str,
        path: &Path,
    ) -> Result<aya::programs::xdp::XdpLinkId, DataplaneError> {
        let pin_err = |e: String| DataplaneError::Pin {
            op: "adopt link",
            path: path.display().to_string(),
            source: std::io::Error::other(e),
        };
        let pinned = PinnedLink::from_pin(path).map_err(|e| pin_err(e.to_string()))?;
        let link = XdpLink::try_from(FdLink::from(pinned)).map_err(|e| pin_err(e.to_string()))?;
        let prog: &mut Xdp = self.program(program)?;
        prog.attach_to_link(link)
            .map_err(|source| DataplaneError::Program { source })
    }

    /// Detach from `iface`: remove its pin (if any) and close this process's link.
    pub fn detach(&mut self, iface: &str, link_pin: Option<&Path>) -> Result<(), DataplaneError> {
        if let Some(path) = link_pin
            && path.exists()
        {
            std::fs::remove_file(path).map_err(|source| DataplaneError::Pin {
                op: "unpin",
                path: path.display().to_string(),
                source,
            })?;
        }
        self.detach_probe(iface)?;
        if let Some((program, id)) = self.links.remove(iface) {
            self.program(program)?
                .detach(id)
                .map_err(|source| DataplaneError::Program { source })?;
        }
        Ok(())
    }

    /// Interfaces this process holds links on.
    pub fn attached(&self) -> Vec<String> {
        let mut v: Vec<String> = self.links.keys().cloned().collect();
        v.sort();
        v
    }

    /// Id of the loaded program (what `bpftool prog` and `ip link` show).
    pub fn program_id(&mut self, program: &'static str) -> Result<u32, DataplaneError> {
        Ok(self.program(program)?.info()?.id())
    }
}

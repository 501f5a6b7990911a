//! The verdict that carries early exits through `?`: an XDP action and the reason it is
//! counted under. Only `main.rs` (through `stats::finish`) turns it into an action.

use aya_ebpf::bindings::xdp_action;
use lb_common::stats::Reason;

/// An early exit: the XDP action and the reason it is counted under.
#[derive(Clone, Copy)]
pub struct Verdict {
    pub action: u32,
    pub reason: Reason,
}

impl Verdict {
    #[inline(always)]
    pub const fn pass(reason: Reason) -> Self {
        Verdict {
            action: xdp_action::XDP_PASS,
            reason,
        }
    }
    #[inline(always)]
    pub const fn drop(reason: Reason) -> Self {
        Verdict {
            action: xdp_action::XDP_DROP,
            reason,
        }
    }
    /// Pass and drop reasons as the decision reports them.
    #[inline(always)]
    pub const fn of(reason: Reason) -> Self {
        match reason {
            Reason::PassNotIp
            | Reason::PassNotVip
            | Reason::PassFragment
            | Reason::PassIcmp
            | Reason::PassProto
            | Reason::PassExtHeaders => Verdict::pass(reason),
            _ => Verdict::drop(reason),
        }
    }
}

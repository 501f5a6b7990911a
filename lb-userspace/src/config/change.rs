//! The rules of the CLI's edits (`vip add`, `backend drain`, `set-weight`, ...) as properties
//! of the model: a `Change` turns one valid configuration into another or says why not.

use std::net::IpAddr;

use super::{
    model::{BackendConfig, Config, Vip, VipRef},
    validate::ConfigError,
};

/// One operator edit of the desired configuration.
#[derive(Clone, Debug, PartialEq)]
pub enum Change {
    VipAdd(Vip),
    VipRemove(VipRef),
    BackendAdd {
        vip: VipRef,
        backend: BackendConfig,
    },
    /// Removed with draining unless `now`.
    BackendRemove {
        vip: VipRef,
        address: IpAddr,
        now: bool,
    },
    /// Weight and/or drain state of one backend.
    BackendSet {
        vip: VipRef,
        address: IpAddr,
        weight: Option<u32>,
        drain: Option<bool>,
    },
}

/// What to do with backends that leave the configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Removal {
    /// Drain first: no new flows, tracked flows continue until idle or the drain timeout.
    Drain,
    /// Immediately: marked down, tracked flows are re-picked.
    Now,
}

/// Why an edit cannot be made; nothing changed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChangeError {
    #[error("VIP {0} already exists; remove it first or change it with `xlb apply`")]
    VipExists(VipRef),
    #[error("no VIP {0} (see `xlb vip list`)")]
    NoVip(VipRef),
    #[error("{vip} already has backend {address}")]
    BackendExists { vip: VipRef, address: IpAddr },
    #[error("{vip} has no backend {address}")]
    NoBackend { vip: VipRef, address: IpAddr },
    #[error(transparent)]
    Invalid(#[from] ConfigError),
    #[error(
        "this apply {0}; nothing applied. Pass --force if that is what you want (an empty or truncated file is the usual cause)"
    )]
    Drastic(String),
}

impl Config {
    /// The configuration after `change`, validated, and how vanished backends leave.
    pub fn apply_change(&self, change: Change) -> Result<(Config, Removal), ChangeError> {
        let mut cfg = self.clone();
        let mut removal = Removal::Drain;
        match change {
            Change::VipAdd(vip) => {
                if cfg.vip(&vip.id()).is_some() {
                    return Err(ChangeError::VipExists(vip.id()));
                }
                cfg.vips.push(vip);
            }
            Change::VipRemove(vip) => {
                let before = cfg.vips.len();
                cfg.vips.retain(|v| v.id() != vip);
                if cfg.vips.len() == before {
                    return Err(ChangeError::NoVip(vip));
                }
            }
            Change::BackendAdd { vip, backend } => {
                let v = cfg.vip_mut(&vip).ok_or(ChangeError::NoVip(vip))?;
                if v.backends.iter().any(|b| b.address == backend.address) {
                    return Err(ChangeError::BackendExists {
                        vip,
                        address: backend.address,
                    });
                }
                v.backends.push(backend);
            }
            Change::BackendRemove { vip, address, now } => {
                let v = cfg.vip_mut(&vip).ok_or(ChangeError::NoVip(vip))?;
                let before = v.backends.len();
                v.backends.retain(|b| b.address != address);
                if v.backends.len() == before {
                    return Err(ChangeError::NoBackend { vip, address });
                }
                if now {
                    removal = Removal::Now;
                }
            }
            Change::BackendSet {
                vip,
                address,
                weight,
                drain,
            } => {
                let v = cfg.vip_mut(&vip).ok_or(ChangeError::NoVip(vip))?;
                let b = v
                    .backends
                    .iter_mut()
                    .find(|b| b.address == address)
                    .ok_or(ChangeError::NoBackend { vip, address })?;
                if let Some(w) = weight {
                    b.weight = w;
                }
                if let Some(d) = drain {
                    b.drain = d;
                }
            }
        }
        cfg.validate()?;
        Ok((cfg, removal))
    }

    /// An apply that would take everything down needs the operator to say so: one that removes
    /// every VIP, or detaches the forwarder from an interface.
    pub fn check_apply(&self, new: &Config) -> Result<(), ChangeError> {
        let mut what = Vec::new();
        if new.vips.is_empty() && !self.vips.is_empty() {
            what.push(format!("removes every VIP ({})", self.vips.len()));
        }
        let gone: Vec<&str> = self
            .interfaces
            .iter()
            .filter(|i| !new.interfaces.iter().any(|n| n.name == i.name))
            .map(|i| i.name.as_str())
            .collect();
        if !gone.is_empty() {
            what.push(format!("detaches the forwarder from {}", gone.join(", ")));
        }
        if what.is_empty() {
            Ok(())
        } else {
            Err(ChangeError::Drastic(what.join(" and ")))
        }
    }

    /// A document for `xlb apply`: without a `[daemon]` or `[announce]` table, `running`'s
    /// settings stand (a file of VIPs alone must not stop the node announcing).
    pub fn parse_apply(text: &str, running: &Config) -> Result<Config, ConfigError> {
        let tables = text.parse::<toml::Table>().ok();
        let has = |k: &str| tables.as_ref().is_some_and(|t| t.contains_key(k));
        let mut cfg: Config = toml::from_str(text).map_err(|e| ConfigError(vec![e.to_string()]))?;
        if !has("daemon") {
            cfg.daemon = running.daemon.clone();
        }
        if !has("announce") {
            cfg.announce = running.announce.clone();
        }
        if !has("sync") {
            cfg.sync = running.sync.clone();
        }
        cfg.validate()?;
        Ok(cfg)
    }
}

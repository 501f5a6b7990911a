//! The saved state: what a restarted daemon needs to write exactly the values its predecessor
//! left in the pinned maps (ids, drains in progress, health, interfaces). JSON, replaced
//! atomically; the format is shared with earlier builds (keep field names, add only).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::ids::{Ids, Removing};
use crate::config::{AttachMode, Config};

pub const SAVED_VERSION: u32 = 1;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Saved {
    pub version: u32,
    pub config: Config,
    /// Digest of the config file this state was last seeded from: a changed file wins over the
    /// saved state at the next start.
    #[serde(default)]
    pub seeded_from: Option<String>,
    pub ids: Ids,
    #[serde(default)]
    pub removing: Vec<Removing>,
    #[serde(default)]
    pub attached: Vec<AttachedIface>,
    /// Backend ids whose health check had them down: a restart keeps them out of the rings.
    #[serde(default)]
    pub down: Vec<u32>,
    /// `xlb drain-node`: nothing announced until `xlb undrain-node`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub node_drained: bool,
}

/// An interface carrying the forwarder.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct AttachedIface {
    pub name: String,
    pub requested: AttachMode,
    pub mode: AttachMode,
    /// The interface's index when attached; `None`: the interface is gone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ifindex: Option<u32>,
}

#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    #[error("saving state to {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("reading state file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "state file {path}: {source}. Move it aside to start from the configuration file (the daemon then writes a new one; backend ids may change once, re-picking tracked flows)"
    )]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("state file {path} has version {found}, this build reads {SAVED_VERSION}")]
    Version { path: PathBuf, found: u32 },
}

/// Where the saved state goes: a file, or memory in tests.
pub trait Store {
    fn save(&mut self, saved: &Saved) -> Result<(), PersistError>;
}

/// The state file named in `[daemon]`.
pub struct FileStore {
    pub path: PathBuf,
}

impl Store for FileStore {
    fn save(&mut self, saved: &Saved) -> Result<(), PersistError> {
        let err = |source| PersistError::Write {
            path: self.path.clone(),
            source,
        };
        let text = serde_json::to_vec_pretty(saved).map_err(|e| err(e.into()))?;
        write_atomic(&self.path, &text).map_err(err)
    }
}

/// Write `data` to `path` so a reader (or a crash) sees the old file or the new, never a mix.
pub fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp: PathBuf = dir.join(format!(
        ".{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("state")
    ));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

/// The saved state at `path`, if there is one.
pub fn load(path: &Path) -> Result<Option<Saved>, PersistError> {
    match std::fs::read(path) {
        Ok(bytes) => {
            let s: Saved =
                serde_json::from_slice(&bytes).map_err(|source| PersistError::Corrupt {
                    path: path.into(),
                    source,
                })?;
            if s.version != SAVED_VERSION {
                return Err(PersistError::Version {
                    path: path.into(),
                    found: s.version,
                });
            }
            Ok(Some(s))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(PersistError::Read {
            path: path.into(),
            source,
        }),
    }
}

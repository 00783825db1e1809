//! Config problems, each located as precisely as the parser allows.

use std::fmt;
use std::path::PathBuf;

/// One problem in a config file: `file:line:column: field.path: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub(crate) file: PathBuf,
    /// 1-based line and column of the offending value, when known.
    pub(crate) position: Option<(usize, usize)>,
    /// Dotted field path such as `upstreams.app.backends[1].address`; empty for file-level
    /// problems.
    pub(crate) path: String,
    pub(crate) message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some((line, column)) = self.position {
            write!(f, ":{line}:{column}")?;
        }
        if !self.path.is_empty() {
            write!(f, ": {}", self.path)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Every problem found in one config file (never empty).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// Why a listener could not come up, at startup or in a reload.
#[derive(Debug, thiserror::Error)]
pub enum ListenerError {
    /// Binding its address failed.
    #[error("listener {listener}: cannot listen on {addr}")]
    Bind {
        /// The listener's name.
        listener: String,
        /// The address it was to bind.
        addr: std::net::SocketAddr,
        /// Why not.
        #[source]
        source: std::io::Error,
    },
    /// Its TLS settings could not be built.
    #[error("listener {listener}: TLS setup failed")]
    Tls {
        /// The listener's name.
        listener: String,
        /// Why not.
        #[source]
        source: rustls::Error,
    },
}

/// Why a reload left the running configuration in place.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The file has problems (every one of them, as `tether check` prints them).
    #[error("{0}")]
    Invalid(ConfigErrors),
    /// A new listener could not come up.
    #[error(transparent)]
    Listener(#[from] ListenerError),
    /// A listener kept its name and bind but gained or lost TLS.
    #[error("listener {0}: turning TLS on or off needs a new listener name or bind")]
    TlsToggle(String),
    /// The task reading the file failed.
    #[error("the reload task failed")]
    Task(#[source] tokio::task::JoinError),
}

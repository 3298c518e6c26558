//! Errors of the blocking driver.

use std::io;

use nvmf_proto::Status;

use crate::auth::AuthFailure;
use crate::queue::{QueueError, SubmitErrorKind};

/// What went wrong talking to a controller.
///
/// The message of each variant already contains its cause's, so no variant
/// names a `source` (error reporters that print the chain would repeat it).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Socket error (connect, read, write).
    #[error("transport I/O error: {0}")]
    Io(io::Error),
    /// The NVMe/TCP queue failed (protocol violation, TermReq, timeout recovery).
    #[error("{0}")]
    Queue(QueueError),
    /// The controller completed a command with an error status.
    #[error("{what}: NVMe status {status}")]
    Status { what: &'static str, status: Status },
    /// The controller refused a Connect; `why` says what it refused
    /// ([`nvmf_proto::fabrics::connect_refusal`]).
    #[error("{what} refused: {why} (NVMe status {status})")]
    ConnectRefused { what: &'static str, status: Status, why: String },
    /// A command was sent but the connection died before its answer: it may
    /// or may not have been executed (a write is not retried automatically).
    #[error("{what}: fate unknown (connection lost after the command was sent)")]
    FateUnknown { what: &'static str },
    /// The controller did not answer in time.
    #[error("{0}: timed out")]
    Timeout(&'static str),
    /// The controller answered something we cannot use (bad CAP, CSTS.CFS...).
    #[error("controller error: {0}")]
    Controller(String),
    /// The caller asked for something impossible (bad option, buffer size...).
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// A submit was refused by the queue.
    #[error("submit refused: {0}")]
    Submit(SubmitErrorKind),
    /// In-band authentication (DH-HMAC-CHAP) of a queue failed; the queue's
    /// connection was closed. Never worth a reconnect with the same secrets.
    #[error("authentication failed: {0}")]
    Auth(AuthFailure),
    /// TLS failed on a queue: the handshake (a PSK or identity the
    /// controller does not accept, a controller without TLS) or, afterwards,
    /// a record the session refused. The message never contains key material.
    #[error("qid {qid}: {error}")]
    Tls { qid: u16, error: nvmf_tls::TlsError },
    /// The controller was lost for good (ctrl_loss_tmo expired) or disconnected.
    #[error("controller is gone: {0}")]
    Gone(String),
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Error {
        Error::Io(e)
    }
}

impl From<QueueError> for Error {
    fn from(e: QueueError) -> Error {
        Error::Queue(e)
    }
}

impl From<AuthFailure> for Error {
    fn from(e: AuthFailure) -> Error {
        Error::Auth(e)
    }
}

impl Error {
    /// The NVMe status, when the controller answered with an error.
    pub fn status(&self) -> Option<Status> {
        match self {
            Error::Status { status, .. } | Error::ConnectRefused { status, .. } => Some(*status),
            _ => None,
        }
    }
    /// Transport-level failure (worth a reconnect), as opposed to a command error.
    pub fn is_transport(&self) -> bool {
        matches!(self, Error::Io(_) | Error::Queue(_) | Error::FateUnknown { .. } | Error::Timeout(_))
            || matches!(self, Error::Tls { error, .. } if !self_inflicted_tls(error))
    }
    /// A security set-up the same settings fail again (DH-HMAC-CHAP refused,
    /// TLS handshake refused): not worth a reconnect.
    pub fn is_security_refusal(&self) -> bool {
        matches!(self, Error::Auth(_)) || matches!(self, Error::Tls { error, .. } if self_inflicted_tls(error))
    }
}

/// TLS errors of the configuration or the handshake (as opposed to a broken
/// record stream later on).
fn self_inflicted_tls(e: &nvmf_tls::TlsError) -> bool {
    matches!(e, nvmf_tls::TlsError::Handshake(_) | nvmf_tls::TlsError::Config(_))
}

/// Result of the blocking driver.
pub type Result<T, E = Error> = std::result::Result<T, E>;

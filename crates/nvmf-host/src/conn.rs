//! Blocking driver of one [`HostQueue`] over a `std::net::TcpStream`.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use nvmf_proto::auth::messages::{SC_C_NEW_TLS_PSK, SC_C_REPLACE_TLS_PSK};

use crate::auth::{auth_required, AuthFailure, AuthProgress, AuthSummary, QueueAuth};
use crate::error::{Error, Result};
use crate::options::ConnectOptions;
use crate::queue::{Completion, HostQueue, QueueConfig, Request, SubmitError};
use crate::tls::{Rx, TlsLink, TlsPsk};
use nvmf_tls::TlsHash;

/// How long one blocking read waits before the driver checks command timeouts.
const POLL_SLICE_MS: u64 = 100;
/// Extra receive room beyond the largest PDU, so several small PDUs fit per read.
const RX_SLACK_BYTES: usize = 64 * 1024;

/// One connected NVMe/TCP queue: socket, state machine, receive buffer.
#[derive(Debug)]
pub struct QueueConn {
    sock: TcpStream,
    q: HostQueue,
    rx: Vec<u8>,
    rx_len: usize,
    epoch: Instant,
    /// Completions popped while waiting for another command.
    stash: VecDeque<Completion>,
    expired: Vec<u16>,
    /// The queue's TLS session, when the controller is reached over TLS.
    tls: Option<Box<TlsLink>>,
}

impl QueueConn {
    /// TCP connect (TCP_NODELAY), then ICReq/ICResp within `timeout`.
    pub fn connect(addr: SocketAddr, cfg: QueueConfig, timeout: Duration) -> Result<QueueConn> {
        QueueConn::connect_tls(addr, cfg, timeout, None)
    }

    /// [`connect`](Self::connect), with a TLS 1.3 handshake offering `tls`'s
    /// identity and PSK between the TCP connect and the ICReq when given
    /// (NVMe/TCP section 3.6). `timeout` bounds each step: the TCP connect,
    /// the handshake, the ICResp.
    pub fn connect_tls(
        addr: SocketAddr,
        cfg: QueueConfig,
        timeout: Duration,
        tls: Option<&TlsPsk>,
    ) -> Result<QueueConn> {
        let mut sock = TcpStream::connect_timeout(&addr, timeout)?;
        sock.set_nodelay(true)?;
        sock.set_write_timeout(Some(Duration::from_millis(crate::queue::IO_COMMAND_TIMEOUT_MS)))?;
        let q = HostQueue::new(cfg);
        let tls = match tls {
            Some(psk) => Some(Box::new(TlsLink::handshake(&mut sock, q.qid(), psk, Instant::now() + timeout)?)),
            None => None,
        };
        let rx = vec![0u8; q.rx_pdu_len_max() + RX_SLACK_BYTES];
        let depth = q.config().queue_depth as usize;
        let mut c = QueueConn {
            sock,
            q,
            rx,
            rx_len: 0,
            epoch: Instant::now(),
            stash: VecDeque::new(),
            expired: Vec::new(),
            tls,
        };
        c.stash.reserve(depth);
        c.expired.reserve(depth);
        c.flush()?;
        let deadline = Instant::now() + timeout;
        while !c.q.is_ready() {
            if Instant::now() >= deadline {
                c.q.fail("no ICResp in time");
                return Err(Error::Timeout("ICResp"));
            }
            match c.pump(Some(deadline)) {
                Err(Error::Io(e)) if e.kind() == ErrorKind::UnexpectedEof && !c.is_tls() => {
                    return Err(Error::Io(std::io::Error::new(
                        ErrorKind::UnexpectedEof,
                        "connection closed by the controller before its ICResp (a port that requires TLS does \
                         that to a plain connection)",
                    )))
                }
                r => r?,
            }
        }
        Ok(c)
    }

    /// The queue state machine (for `set_in_capsule_data_max_bytes`, counters...).
    pub fn queue(&self) -> &HostQueue {
        &self.q
    }
    pub fn queue_mut(&mut self) -> &mut HostQueue {
        &mut self.q
    }
    /// The socket, for a driver that waits for it to become readable (poll,
    /// io_uring) and then calls [`pump`](Self::pump) without waiting.
    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        std::os::fd::AsRawFd::as_raw_fd(&self.sock)
    }
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.sock.peer_addr().ok()
    }
    /// Whether the queue runs over TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Submit and send a command; returns its CID. Once a CID is returned the
    /// command completes exactly once through [`next_completion`](Self::next_completion)
    /// or [`wait_for`](Self::wait_for), also when sending fails (then with an
    /// unknown fate). A refused request comes back inside the error.
    pub fn submit(&mut self, req: Request) -> std::result::Result<u16, SubmitError> {
        let now = self.now_ms();
        let cid = self.q.submit(req, now)?;
        let _ = self.flush(); // a send failure fails the queue, which completes the command
        Ok(cid)
    }

    fn flush(&mut self) -> Result<()> {
        if self.q.output().is_empty() {
            return Ok(());
        }
        let r = match self.tls.as_deref_mut() {
            None => self.sock.write_all(self.q.output()).map_err(Error::from),
            Some(t) => t.write(&mut self.sock, self.q.qid(), self.q.output()),
        };
        self.q.clear_output();
        if let Err(e) = r {
            self.q.fail("send failed");
            return Err(e);
        }
        Ok(())
    }

    /// Read once (waiting until `deadline` at most, `None` = do not wait),
    /// feed the queue, send what it produced, check timeouts. An `Err` means
    /// the queue failed; its commands are then completed with an unknown fate.
    pub fn pump(&mut self, deadline: Option<Instant>) -> Result<()> {
        if let Some(e) = self.q.error() {
            return Err(e.clone().into());
        }
        let wait = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        let slice = wait.map(|w| w.min(Duration::from_millis(POLL_SLICE_MS)));
        let read = |sock: &mut TcpStream, buf: &mut [u8]| match slice {
            None => sock.set_nonblocking(true).and_then(|_| {
                let r = sock.read(buf);
                sock.set_nonblocking(false)?;
                r
            }),
            Some(s) => sock.set_read_timeout(Some(s.max(Duration::from_millis(1)))).and_then(|_| sock.read(buf)),
        };
        let free = &mut self.rx[self.rx_len..];
        let res = match self.tls.as_deref_mut() {
            None => match read(&mut self.sock, free) {
                Ok(0) => Ok(Rx::Closed("connection closed by the controller")),
                Ok(n) => Ok(Rx::Data(n)),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted) => {
                    Ok(Rx::Data(0))
                }
                Err(e) => Err(Error::Io(e)),
            },
            Some(t) => t.read(&mut self.sock, self.q.qid(), free, read),
        };
        match res {
            Ok(Rx::Closed(why)) => {
                self.q.fail("connection closed by the controller");
                return Err(Error::Io(std::io::Error::new(ErrorKind::UnexpectedEof, why)));
            }
            Ok(Rx::Data(0)) => {}
            Ok(Rx::Data(n)) => {
                self.rx_len += n;
                let used = self.q.receive(&self.rx[..self.rx_len]);
                // A TermReq may be queued even when receive failed: send it first.
                let flushed = self.flush();
                let used = used?;
                flushed?;
                self.rx.copy_within(used..self.rx_len, 0);
                self.rx_len -= used;
                debug_assert!(self.rx_len < self.rx.len(), "framer bounds PDUs below the buffer size");
            }
            Err(e) => {
                self.q.fail("receive failed");
                return Err(e);
            }
        }
        self.expired.clear();
        let now = self.now_ms();
        if self.q.on_tick(now, &mut self.expired) > 0 {
            // No Abort support yet: a timed out command resets the queue (the
            // controller driver reconnects), as Linux falls back to after Abort.
            let e = self.q.fail("command timeout");
            let _ = self.sock.shutdown(std::net::Shutdown::Both);
            tracing::warn!(qid = self.q.qid(), "command timeout: failing the queue");
            return Err(e.into());
        }
        Ok(())
    }

    /// The next completion, waiting until `deadline` (`None`: don't wait).
    pub fn next_completion(&mut self, deadline: Option<Instant>) -> Result<Option<Completion>> {
        loop {
            if let Some(c) = self.stash.pop_front().or_else(|| self.q.pop_completion()) {
                return Ok(Some(c));
            }
            if let Some(e) = self.q.error() {
                return Err(e.clone().into());
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(None);
            }
            // An error here has completed every command: the loop returns them first.
            let r = self.pump(deadline);
            if deadline.is_none() {
                r?;
                return Ok(self.q.pop_completion());
            }
        }
    }

    /// Wait for the completion of `cid`, keeping others for later.
    pub fn wait_for(&mut self, cid: u16) -> Result<Completion> {
        loop {
            if let Some(pos) = self.stash.iter().position(|c| c.cid == cid) {
                return Ok(self.stash.remove(pos).expect("position is in range"));
            }
            while let Some(c) = self.q.pop_completion() {
                if c.cid == cid {
                    return Ok(c);
                }
                self.stash.push_back(c);
            }
            if let Some(e) = self.q.error() {
                return Err(e.clone().into());
            }
            let _ = self.pump(Some(Instant::now() + Duration::from_millis(POLL_SLICE_MS)));
        }
    }

    /// Completions other commands produced while someone waited (AERs...).
    pub fn take_stashed(&mut self) -> Option<Completion> {
        self.stash.pop_front()
    }

    /// Submit and wait for one command.
    pub fn execute(&mut self, req: Request) -> Result<Completion> {
        let cid = self.submit(req).map_err(|e| Error::Submit(e.kind))?;
        self.wait_for(cid)
    }

    /// Run a DH-HMAC-CHAP exchange on this (connected, idle) queue. On
    /// failure the queue is failed and its socket closed: a queue that did
    /// not authenticate is not used.
    pub fn authenticate(&mut self, mut auth: QueueAuth) -> Result<AuthSummary> {
        self.run_auth(&mut auth)
    }

    /// Secure channel concatenation on this (admin) queue: authenticate with
    /// SC_C NEWTLSPSK (plain queue) or REPLACETLSPSK (over TLS), whatever the
    /// Connect response said, and return the generated TLS PSK.
    pub fn authenticate_concat(&mut self, opts: &ConnectOptions, transaction_id: u16) -> Result<TlsPsk> {
        let qid = self.q.qid();
        let Some(mut config) = opts.dhchap_config(transaction_id) else {
            self.close("authentication failed");
            return Err(Error::Invalid("concat (secure channel concatenation) needs dhchap_secret".into()));
        };
        config.sc_c = if self.is_tls() { SC_C_REPLACE_TLS_PSK } else { SC_C_NEW_TLS_PSK };
        let mut auth = QueueAuth::new(qid, config, 0);
        let summary = self.run_auth(&mut auth)?;
        let Some(derived) = auth.take_generated_psk() else {
            self.close("authentication failed");
            return Err(Error::Auth(AuthFailure::Concat { qid, why: crate::auth::CONCAT_NEEDS_DH_GROUP }));
        };
        // A generated PSK exists only for SHA-256 and SHA-384 (derive_generated).
        let hash = TlsHash::from_psk_len(summary.hash.digest_len()).unwrap_or(TlsHash::Sha256);
        tracing::debug!(qid, identity = %derived.identity, "secure channel concatenation: TLS PSK generated");
        Ok(TlsPsk { identity: derived.identity, psk: derived.tls_psk, hash })
    }

    fn run_auth(&mut self, auth: &mut QueueAuth) -> Result<AuthSummary> {
        let now = self.now_ms();
        let mut progress = auth.start(&mut self.q, now);
        loop {
            let _ = self.flush(); // a send failure fails the queue, which completes the command
            match progress {
                AuthProgress::Pending => {}
                AuthProgress::Done(summary) => {
                    tracing::debug!("{summary}");
                    return Ok(summary);
                }
                AuthProgress::Failed(failure) => {
                    self.close("authentication failed");
                    return Err(Error::Auth(failure));
                }
            }
            let Some(cid) = auth.outstanding_cid() else {
                debug_assert!(false, "pending exchange without a command in flight");
                self.close("authentication failed");
                return Err(Error::Auth(crate::auth::AuthFailure::Transport { qid: auth.qid() }));
            };
            // The command's timeout (what is left of the exchange's) bounds
            // this wait: an expired command fails the queue and completes.
            let c = match self.wait_for(cid) {
                Ok(c) => c,
                Err(e) => {
                    self.close("authentication failed");
                    return Err(e);
                }
            };
            let now = self.now_ms();
            progress = auth.on_completion(&mut self.q, c, now);
        }
    }

    /// After this queue's Connect succeeded with `connect_dw0`: authenticate
    /// with `opts`' secrets when the controller asks for it (ATR) or the host
    /// wants the controller authenticated (see [`crate::auth`]). The
    /// exchange is bounded by the queue's command timeout.
    pub fn authenticate_after_connect(
        &mut self,
        opts: &ConnectOptions,
        connect_dw0: u32,
        transaction_id: u16,
    ) -> Result<Option<AuthSummary>> {
        let qid = self.q.qid();
        let host_key = opts.dhchap_secret.as_ref();
        let needed = auth_required(qid, connect_dw0, host_key, opts.dhchap_ctrl_secret.as_ref());
        match needed {
            Ok(false) => Ok(None),
            Ok(true) => {
                let config = opts.dhchap_config(transaction_id).expect("auth_required checked the host secret");
                self.authenticate(QueueAuth::new(qid, config, 0)).map(Some)
            }
            Err(failure) => {
                self.close("authentication failed");
                Err(Error::Auth(failure))
            }
        }
    }

    /// Fail the queue and close the socket (after a TLS close_notify, best effort).
    pub fn close(&mut self, why: &'static str) {
        self.q.fail(why);
        if let Some(t) = self.tls.as_deref_mut() {
            t.close(&mut self.sock);
        }
        let _ = self.sock.shutdown(std::net::Shutdown::Both);
    }
}

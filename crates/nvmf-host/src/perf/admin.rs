//! Admin queue of a perf run: connect, enable, identify, ask for I/O queues,
//! keep alive, disconnect. Blocking (std `TcpStream`) over a [`HostQueue`],
//! through a TLS session ([`crate::tls`]) when the run has TLS settings.
//!
//! This is the minimum `nvmf perf` needs. The library's general
//! [`crate::Controller`] always connects its own blocking I/O queues, while
//! perf's I/O queues live on engine cores; once the controller can be brought
//! up admin-only (Set Features Number of Queues, no I/O queue connects), this
//! module should wrap it, keeping [`AdminSession`]'s small interface.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use nvmf_proto::fabrics::{self, cc, csts, prop, Cap, ConnectCmd, ConnectData, PropertyCmd};
use nvmf_proto::features::{num_queues_from, num_queues_value, FeatureCmd};
use nvmf_proto::identify::{IdentifyCmd, IdentifyController, IdentifyNamespace, IDENTIFY_LEN};
use nvmf_proto::opcodes::{admin, cns, fid};
use nvmf_proto::Sqe;

use super::config::PerfConfig;
use super::run::ControllerFacts;
use crate::auth::{
    auth_required, host_config, AuthFailure, AuthProgress, AuthSummary, QueueAuth, CONCAT_NEEDS_DH_GROUP,
};
use crate::options::{default_hostid, default_hostnqn, KATO_DEFAULT_S};
use crate::queue::{Completion, HostQueue, QueueConfig, Request};
use crate::tls::{Rx, TlsLink, TlsPsk};
use nvmf_proto::auth::messages::{SC_C_NEW_TLS_PSK, SC_C_REPLACE_TLS_PSK};
use nvmf_tls::TlsHash;

/// Keep Alives perf sends per KATO.
const KEEP_ALIVES_PER_KATO: u32 = 3;
/// Keep Alive Timeout perf asks for: a Keep Alive every
/// [`KATO_DEFAULT_S`] (5 s), three of them per KATO (15 s). Longer than the
/// library's default KATO (whose Keep Alive goes out every KATO/2 from a
/// thread of its own) because perf sends Keep Alive from the run's control
/// loop, between result and progress polls, on a machine its queues keep
/// busy: a benchmark survives two late Keep Alives before the target drops
/// its controller.
pub const KATO_MS: u32 = KEEP_ALIVES_PER_KATO * KATO_DEFAULT_S * 1000;
/// Socket read timeout (also bounds every admin command here).
pub const ADMIN_IO_TIMEOUT_MS: u64 = 10_000;
/// Largest admin receive buffer (Identify data + headers).
const ADMIN_RX_BYTES: usize = 64 << 10;

/// A connected, enabled admin queue.
#[derive(Debug)]
pub struct AdminSession {
    sock: TcpStream,
    queue: HostQueue,
    rx: Vec<u8>,
    rx_len: usize,
    epoch: Instant,
    facts: ControllerFacts,
    /// The admin queue's TLS session, with TLS settings.
    tls: Option<Box<TlsLink>>,
}

impl AdminSession {
    /// Connect the admin queue to `subnqn` at `addr`, enable the controller,
    /// identify it and namespace `nsid`, and ask for `io_queues` I/O queues.
    /// No authentication secrets: see [`open`](Self::open).
    pub fn connect(
        addr: SocketAddr,
        subnqn: &str,
        hostnqn: Option<&str>,
        nsid: u32,
        io_queues: u32,
        hdr_digest: bool,
        data_digest: bool,
    ) -> Result<AdminSession, String> {
        let cfg = PerfConfig {
            namespace_id: nsid,
            io_queues,
            header_digest: hdr_digest,
            data_digest,
            ..PerfConfig::default()
        };
        AdminSession::open(addr, subnqn, hostnqn, &cfg)
    }

    /// [`connect`](Self::connect) with the namespace, queue count, digests,
    /// DH-HMAC-CHAP secrets and TLS settings of `cfg`: the admin queue does
    /// its TLS handshake before the ICReq (identity and PSK derived as the
    /// blocking driver does, [`crate::TlsOptions::psk`]) and authenticates
    /// right after its Connect when asked to ([`crate::auth`]).
    pub fn open(
        addr: SocketAddr,
        subnqn: &str,
        hostnqn: Option<&str>,
        cfg: &PerfConfig,
    ) -> Result<AdminSession, String> {
        let (nsid, io_queues) = (cfg.namespace_id, cfg.io_queues);
        // Same identity as the other host tools (/etc/nvme/hostid and hostnqn).
        let hostid = default_hostid();
        let hostnqn = match hostnqn {
            Some(h) => h.to_string(),
            None => default_hostnqn(&hostid),
        };
        nvmf_proto::validate_nqn(&hostnqn).map_err(|e| format!("host NQN {hostnqn:?}: {e}"))?;
        nvmf_proto::validate_nqn(subnqn).map_err(|e| format!("subsystem NQN {subnqn:?}: {e}"))?;
        // With --concat the first admin connection is plain; its
        // authentication generates the PSK of the TLS connections after it.
        let psk = match &cfg.tls {
            Some(t) if !cfg.concat => Some(t.psk(&hostnqn, subnqn)?),
            _ => None,
        };
        let mut s = AdminSession::transport(addr, hostid, &hostnqn, subnqn, psk.as_ref(), cfg)?;
        let dw0 = s.connect_admin()?;
        let (host_key, ctrl_key) = (cfg.dhchap_secret.as_ref(), cfg.dhchap_ctrl_secret.as_ref());
        if cfg.concat {
            // Secure channel concatenation, as the library's Controller (and
            // Linux 6.15) does it: NEWTLSPSK on the plain admin queue, which
            // then goes (with its controller); the admin queue comes back over
            // TLS with the generated PSK, connects a new controller and
            // replaces the PSK (REPLACETLSPSK). The I/O queues use that last
            // PSK and do not authenticate.
            let generated = s.authenticate_concat(cfg, 0)?;
            s.close_quietly();
            s = AdminSession::transport(addr, hostid, &hostnqn, subnqn, Some(&generated), cfg)?;
            s.connect_admin()?;
            s.facts.concat_psk = Some(s.authenticate_concat(cfg, 1)?);
        } else {
            let needed =
                auth_required(0, dw0, host_key, ctrl_key).map_err(|f| format!("authentication failed: {f}"))?;
            if let (true, Some(host_key)) = (needed, host_key) {
                // T_ID 0 here; I/O queue N uses N (one transaction per queue).
                let config = host_config(&hostnqn, subnqn, host_key, ctrl_key, 0);
                s.authenticate(&mut QueueAuth::new(0, config, ADMIN_IO_TIMEOUT_MS))?;
            }
        }
        // Properties: CAP, enable, wait for ready.
        let c = s.command(Request::new(PropertyCmd::get_sqe(0, prop::CAP, true)))?;
        let cap = Cap::from_u64(c.cqe.result64());
        s.facts.queue_entries_max = cap.mqes as u32 + 1;
        s.command(Request::new(PropertyCmd::set_sqe(0, prop::CC, false, cc::LINUX_ENABLE as u64)))?;
        let ready_by = Instant::now() + Duration::from_millis((cap.to_500ms.max(1) as u64) * 500);
        loop {
            let c = s.command(Request::new(PropertyCmd::get_sqe(0, prop::CSTS, false)))?;
            let v = c.cqe.dw0;
            if v & csts::CFS != 0 {
                return Err("controller fatal status (CSTS.CFS) while enabling".into());
            }
            if v & csts::RDY != 0 {
                break;
            }
            if Instant::now() > ready_by {
                return Err("controller did not become ready (CSTS.RDY) within CAP.TO".into());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        // Identify.
        let idc = IdentifyCmd { cns: cns::CONTROLLER, cntid: 0, csi: 0, nsid: 0 };
        let c = s.command(Request::read(idc.to_sqe(0), vec![0; IDENTIFY_LEN]))?;
        let ctrl = IdentifyController::parse(&c.buf).ok_or("short Identify Controller data")?;
        s.facts.in_capsule_data_bytes = ctrl.in_capsule_data_bytes();
        s.facts.mdts_bytes = ctrl.mdts_bytes();
        let idn = IdentifyCmd { cns: cns::NAMESPACE, cntid: 0, csi: 0, nsid };
        let c = s.command(Request::read(idn.to_sqe(0), vec![0; IDENTIFY_LEN]))?;
        let ns = IdentifyNamespace::parse(&c.buf).ok_or("short Identify Namespace data")?;
        if ns.nsze == 0 {
            return Err(format!("namespace {nsid} does not exist (or is inactive)"));
        }
        s.facts.nsze = ns.nsze;
        s.facts.lba_bytes = ns.block_size() as u64;
        // Number of queues.
        let want = io_queues.min(u16::MAX as u32) as u16;
        let c = s.command(Request::new(FeatureCmd::set_sqe(0, fid::NUM_QUEUES, num_queues_value(want, want))))?;
        let (nsq, ncq) = num_queues_from(c.cqe.dw0);
        s.facts.io_queues_granted = nsq.min(ncq);
        Ok(s)
    }

    /// TCP connect, the TLS handshake with `psk` (if any) and the IC exchange.
    fn transport(
        addr: SocketAddr,
        hostid: [u8; 16],
        hostnqn: &str,
        subnqn: &str,
        psk: Option<&TlsPsk>,
        cfg: &PerfConfig,
    ) -> Result<AdminSession, String> {
        let mut sock = TcpStream::connect_timeout(&addr, Duration::from_millis(ADMIN_IO_TIMEOUT_MS))
            .map_err(|e| format!("connect: {e}"))?;
        sock.set_nodelay(true).map_err(|e| e.to_string())?;
        let tls = match psk {
            Some(psk) => {
                let deadline = Instant::now() + Duration::from_millis(ADMIN_IO_TIMEOUT_MS);
                Some(Box::new(TlsLink::handshake(&mut sock, 0, psk, deadline).map_err(|e| match e {
                    crate::Error::Tls { error, .. } => error.to_string(),
                    e => format!("TLS handshake: {e}"),
                })?))
            }
            None => None,
        };
        sock.set_read_timeout(Some(Duration::from_millis(ADMIN_IO_TIMEOUT_MS))).map_err(|e| e.to_string())?;
        let mut qc = QueueConfig::admin();
        qc.hdr_digest = cfg.header_digest;
        qc.data_digest = cfg.data_digest;
        qc.transfer_len_max_bytes = IDENTIFY_LEN as u32;
        let mut s = AdminSession {
            sock,
            queue: HostQueue::new(qc),
            rx: vec![0; ADMIN_RX_BYTES],
            rx_len: 0,
            epoch: Instant::now(),
            facts: ControllerFacts {
                cntlid: 0,
                hostid,
                hostnqn: hostnqn.to_string(),
                subnqn: subnqn.to_string(),
                lba_bytes: 0,
                nsze: 0,
                in_capsule_data_bytes: 0,
                mdts_bytes: None,
                queue_entries_max: 0,
                io_queues_granted: 0,
                concat_psk: None,
            },
            tls,
        };
        s.flush()?;
        while !s.queue.is_ready() {
            s.read_some()?;
        }
        Ok(s)
    }

    /// The admin queue's Connect (dynamic controller); returns its DW0.
    fn connect_admin(&mut self) -> Result<u32, String> {
        let sqsize = self.queue.config().queue_depth - 1;
        let cmd = ConnectCmd { recfmt: 0, qid: 0, sqsize, cattr: 0, kato_ms: KATO_MS };
        let data = ConnectData {
            hostid: self.facts.hostid,
            cntlid: fabrics::CNTLID_DYNAMIC,
            subnqn: self.facts.subnqn.clone(),
            hostnqn: self.facts.hostnqn.clone(),
        };
        let c = self.command_any(Request::write(cmd.to_sqe(0), data.encode().to_vec()))?;
        if !c.is_success() {
            let status = c.status();
            let why = fabrics::connect_refusal(status, c.cqe.dw0, &self.facts.subnqn, &self.facts.hostnqn);
            return Err(match why {
                Some(why) => format!("Connect refused: {why} (NVMe status {status})"),
                None => format!("Connect failed: {}", status.name()),
            });
        }
        self.facts.cntlid = c.cqe.dw0 as u16;
        Ok(c.cqe.dw0)
    }

    /// DH-HMAC-CHAP with secure channel concatenation: NEWTLSPSK on a plain
    /// queue, REPLACETLSPSK over TLS; returns the generated TLS PSK.
    fn authenticate_concat(&mut self, cfg: &PerfConfig, transaction_id: u16) -> Result<TlsPsk, String> {
        let host_key = cfg.dhchap_secret.as_ref().ok_or("--concat needs --dhchap-secret")?;
        let (hostnqn, subnqn) = (&self.facts.hostnqn, &self.facts.subnqn);
        let mut config = host_config(hostnqn, subnqn, host_key, cfg.dhchap_ctrl_secret.as_ref(), transaction_id);
        config.sc_c = if self.tls.is_some() { SC_C_REPLACE_TLS_PSK } else { SC_C_NEW_TLS_PSK };
        let mut auth = QueueAuth::new(0, config, ADMIN_IO_TIMEOUT_MS);
        let summary = self.authenticate(&mut auth)?;
        let derived = auth.take_generated_psk().ok_or_else(|| {
            format!("authentication failed: {}", AuthFailure::Concat { qid: 0, why: CONCAT_NEEDS_DH_GROUP })
        })?;
        // A generated PSK exists only for SHA-256 and SHA-384.
        let hash = TlsHash::from_psk_len(summary.hash.digest_len()).unwrap_or(TlsHash::Sha256);
        tracing::debug!(identity = %derived.identity, "secure channel concatenation: TLS PSK generated");
        Ok(TlsPsk { identity: derived.identity, psk: derived.tls_psk, hash })
    }

    /// Drop the connection without a Disconnect (concatenation replaces it).
    fn close_quietly(&mut self) {
        if let Some(t) = self.tls.as_deref_mut() {
            t.close(&mut self.sock);
        }
        let _ = self.sock.shutdown(std::net::Shutdown::Both);
    }

    pub fn facts(&self) -> &ControllerFacts {
        &self.facts
    }

    pub fn keep_alive_interval(&self) -> Option<Duration> {
        Some(Duration::from_millis((KATO_MS / KEEP_ALIVES_PER_KATO) as u64))
    }

    pub fn keep_alive(&mut self) -> Result<(), String> {
        self.command(Request::new(Sqe::new(admin::KEEP_ALIVE, 0, 0))).map(|_| ())
    }

    /// Best effort: shut the controller down (CC.SHN normal) and close.
    pub fn disconnect(mut self) {
        let v = (cc::LINUX_ENABLE | (1 << cc::SHN_SHIFT)) as u64;
        let _ = self.command(Request::new(PropertyCmd::set_sqe(0, prop::CC, false, v)));
        if let Some(t) = self.tls.as_deref_mut() {
            t.close(&mut self.sock);
        }
        let _ = self.sock.shutdown(std::net::Shutdown::Both);
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Whether the admin queue runs over TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    fn flush(&mut self) -> Result<(), String> {
        let r = match self.tls.as_deref_mut() {
            None => self.sock.write_all(self.queue.output()).map_err(|e| format!("send: {e}")),
            Some(t) => t.write(&mut self.sock, 0, self.queue.output()).map_err(|e| format!("send: {e}")),
        };
        self.queue.clear_output();
        r
    }

    /// Read plaintext into `self.rx[self.rx_len..]`: at least one byte, or
    /// an error (the socket's read timeout, [`ADMIN_IO_TIMEOUT_MS`], bounds
    /// the wait; over TLS, control records such as KeyUpdates give no bytes
    /// and the wait goes on until then).
    fn recv(&mut self) -> Result<usize, String> {
        let closed = |queue: &HostQueue, tls: bool| {
            if queue.is_ready() || tls {
                "controller closed the admin connection".to_string()
            } else {
                "controller closed the admin connection before its ICResp (a port that requires TLS does that to \
                 a plain connection: see --tls-key)"
                    .to_string()
            }
        };
        let Some(t) = self.tls.as_deref_mut() else {
            let n = self.sock.read(&mut self.rx[self.rx_len..]).map_err(|e| format!("receive: {e}"))?;
            if n == 0 {
                return Err(closed(&self.queue, false));
            }
            return Ok(n);
        };
        let deadline = Instant::now() + Duration::from_millis(ADMIN_IO_TIMEOUT_MS);
        loop {
            let free = &mut self.rx[self.rx_len..];
            match t.read(&mut self.sock, 0, free, |s, b| s.read(b)).map_err(|e| format!("receive: {e}"))? {
                Rx::Data(0) => {}
                Rx::Data(n) => return Ok(n),
                Rx::Closed(why) => return Err(format!("{}: {why}", closed(&self.queue, true))),
            }
            if Instant::now() >= deadline {
                return Err(format!("receive: no answer within {ADMIN_IO_TIMEOUT_MS} ms"));
            }
        }
    }

    fn read_some(&mut self) -> Result<(), String> {
        if self.rx_len == self.rx.len() {
            return Err("admin PDU larger than the receive buffer".into());
        }
        let n = self.recv()?;
        self.rx_len += n;
        let used = self.queue.receive(&self.rx[..self.rx_len]);
        // A TermReq may have been queued: send it before reporting.
        let _ = self.flush();
        let used = used.map_err(|e| e.to_string())?;
        self.rx.copy_within(used..self.rx_len, 0);
        self.rx_len -= used;
        Ok(())
    }

    /// Run a DH-HMAC-CHAP exchange; on failure the connection is closed.
    fn authenticate(&mut self, auth: &mut QueueAuth) -> Result<AuthSummary, String> {
        let now = self.now_ms();
        let mut progress = auth.start(&mut self.queue, now);
        loop {
            self.flush()?;
            match progress {
                AuthProgress::Pending => {}
                AuthProgress::Done(summary) => {
                    tracing::debug!("{summary}");
                    return Ok(summary);
                }
                AuthProgress::Failed(failure) => {
                    let _ = self.sock.shutdown(std::net::Shutdown::Both);
                    return Err(format!("authentication failed: {failure}"));
                }
            }
            // Each read waits ADMIN_IO_TIMEOUT_MS at most; the exchange as a
            // whole ends at its deadline.
            let c = loop {
                if let Some(c) = self.queue.pop_completion() {
                    break c;
                }
                if self.now_ms() >= auth.deadline_ms() {
                    let _ = self.sock.shutdown(std::net::Shutdown::Both);
                    return Err(format!("authentication failed: qid 0: no answer within {ADMIN_IO_TIMEOUT_MS} ms"));
                }
                self.read_some()?;
            };
            let now = self.now_ms();
            progress = auth.on_completion(&mut self.queue, c, now);
        }
    }

    /// Submit one command and wait for it; non-success status is an error.
    fn command(&mut self, req: Request) -> Result<Completion, String> {
        let opcode = req.sqe.opcode;
        let c = self.command_any(req)?;
        if !c.is_success() {
            return Err(format!("admin opcode {opcode:#04x} failed: {}", c.status().name()));
        }
        Ok(c)
    }

    /// Submit one command and wait for its completion, whatever its status.
    fn command_any(&mut self, req: Request) -> Result<Completion, String> {
        let cid = self.queue.submit(req, self.now_ms()).map_err(|e| format!("submit: {e}"))?;
        self.flush()?;
        loop {
            if let Some(c) = self.queue.pop_completion() {
                debug_assert_eq!(c.cid, cid, "one admin command at a time");
                return Ok(c);
            }
            self.read_some()?;
        }
    }
}

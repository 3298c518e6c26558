//! A scripted NVMe/TCP controller for host tests, built on nvmf_proto only.
//! One thread per connection, a shared RAM namespace, and fault switches.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nvmf_proto::auth::{CtrlAuth, CtrlConfig, CtrlStatus};
use nvmf_proto::fabrics::{cc, csts, prop, Cap, ConnectCmd, ConnectData, PropertyCmd};
use nvmf_proto::identify::{self, cntrltype, IdentifyCmd, IdentifyController, IdentifyNamespace, LbaFormat};
use nvmf_proto::log::{self as plog, DiscoveryEntry, GetLogPageCmd};
use nvmf_proto::opcodes::{admin, cns, fctype, fid, io, lid};
use nvmf_proto::pdu::{self, fes, flags, DataHdr, IcResp, TxConfig};
use nvmf_proto::status::{generic, sct};
use nvmf_proto::{Cqe, Decoded, FrameConfig, Pdu, Role, Sqe, Status};

pub const BLOCK_SIZE: usize = 512;
pub const NS_BLOCKS: u64 = 4096;
pub const SUBNQN: &str = "nqn.2026-11.io.nvmf:fake";

/// Fault switches, flipped by tests while the target runs.
#[derive(Default)]
pub struct Faults {
    /// ICResp with PFV 1.
    pub bad_icresp: AtomicBool,
    /// Send a C2HData beyond the command's buffer for reads.
    pub c2h_out_of_range: AtomicBool,
    /// Ignore I/O Read commands (the host must time out).
    pub ignore_reads: AtomicBool,
    /// Answer reads with a C2HTermReq.
    pub term_req_on_read: AtomicBool,
    /// Corrupt the data digest of the next N reads.
    pub corrupt_read_digests: AtomicU32,
    /// Close the connection on the next N writes (after receiving them).
    pub drop_on_write: AtomicU32,
    /// Use the C2HData SUCCESS flag instead of a CapsuleResp.
    pub c2h_success: AtomicBool,
    /// Never answer Authentication Receive (the host must time out).
    pub ignore_auth_receive: AtomicBool,
}

/// DH-HMAC-CHAP on the fake controller: which Connects set ATR, and the
/// controller side of every transaction (nvmf_proto's `CtrlAuth`).
#[derive(Clone, Debug)]
pub struct FakeAuth {
    pub ctrl: CtrlConfig,
    /// ATR in the admin queue's Connect response.
    pub admin_atr: bool,
    /// ATR in the I/O queues' Connect responses.
    pub io_atr: bool,
}

/// The end of one authentication transaction, as the controller saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AuthEvent {
    pub qid: u16,
    pub t_id: u16,
    pub status: CtrlStatus,
    pub bidirectional: bool,
}

pub struct FakeTarget {
    pub addr: SocketAddr,
    pub disk: Arc<Mutex<Vec<u8>>>,
    pub faults: Arc<Faults>,
    pub connects: Arc<AtomicU32>,
    pub discovery_entries: Arc<Mutex<Vec<DiscoveryEntry>>>,
    /// MAXH2CDATA announced (>= 4096), data chunk size for C2HData too.
    pub maxh2cdata: u32,
    /// Finished authentication transactions, in order.
    pub auth_events: Arc<Mutex<Vec<AuthEvent>>>,
    /// Connections the host closed (or that ended).
    pub closed: Arc<AtomicU32>,
}

/// What every connection of one fake target shares.
#[derive(Clone)]
struct Shared {
    disk: Arc<Mutex<Vec<u8>>>,
    faults: Arc<Faults>,
    connects: Arc<AtomicU32>,
    entries: Arc<Mutex<Vec<DiscoveryEntry>>>,
    auth: Option<FakeAuth>,
    auth_events: Arc<Mutex<Vec<AuthEvent>>>,
    closed: Arc<AtomicU32>,
}

impl FakeTarget {
    pub fn start() -> FakeTarget {
        FakeTarget::start_with(8192)
    }
    pub fn start_with(maxh2cdata: u32) -> FakeTarget {
        FakeTarget::start_full(maxh2cdata, None)
    }
    /// A target that asks for (and checks) DH-HMAC-CHAP as `auth` says.
    pub fn start_with_auth(auth: FakeAuth) -> FakeTarget {
        FakeTarget::start_full(8192, Some(auth))
    }
    fn start_full(maxh2cdata: u32, auth: Option<FakeAuth>) -> FakeTarget {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let t = FakeTarget {
            addr,
            auth_events: Arc::new(Mutex::new(Vec::new())),
            closed: Arc::new(AtomicU32::new(0)),
            disk: Arc::new(Mutex::new(vec![0u8; NS_BLOCKS as usize * BLOCK_SIZE])),
            faults: Arc::new(Faults::default()),
            connects: Arc::new(AtomicU32::new(0)),
            discovery_entries: Arc::new(Mutex::new(vec![DiscoveryEntry {
                trtype: plog::trtype::TCP,
                adrfam: plog::adrfam::IPV4,
                subtype: plog::subtype::NVME,
                treq: 0,
                portid: 1,
                cntlid: 0xffff,
                asqsz: 32,
                eflags: 0,
                trsvcid: addr.port().to_string(),
                subnqn: SUBNQN.into(),
                traddr: "127.0.0.1".into(),
                sectype: 0,
            }])),
            maxh2cdata,
        };
        let shared = Shared {
            disk: t.disk.clone(),
            faults: t.faults.clone(),
            connects: t.connects.clone(),
            entries: t.discovery_entries.clone(),
            auth,
            auth_events: t.auth_events.clone(),
            closed: t.closed.clone(),
        };
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(s) = s else { return };
                let shared = shared.clone();
                std::thread::spawn(move || {
                    let closed = shared.closed.clone();
                    let mut c = Conn::new(s, shared, maxh2cdata);
                    let _ = c.run();
                    closed.fetch_add(1, Ordering::Relaxed);
                });
            }
        });
        t
    }

    /// Wait (bounded) until `n` connections have ended.
    pub fn wait_closed(&self, n: u32) -> bool {
        let t = std::time::Instant::now();
        while self.closed.load(Ordering::Relaxed) < n {
            if t.elapsed() > Duration::from_secs(10) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        true
    }
}

struct Conn {
    s: TcpStream,
    disk: Arc<Mutex<Vec<u8>>>,
    faults: Arc<Faults>,
    connects: Arc<AtomicU32>,
    entries: Arc<Mutex<Vec<DiscoveryEntry>>>,
    frame: FrameConfig,
    tx: TxConfig,
    maxh2cdata: u32,
    qid: u16,
    discovery: bool,
    cc: u32,
    /// Writes waiting for H2CData: cid -> (slba, buffer, received).
    pending_writes: std::collections::HashMap<u16, (u64, Vec<u8>, usize)>,
    auth: Option<FakeAuth>,
    auth_events: Arc<Mutex<Vec<AuthEvent>>>,
    /// The transaction in progress (or the last one) and its T_ID.
    ctrl_auth: Option<(CtrlAuth, u16)>,
    /// The end of the current transaction is in `auth_events`.
    auth_recorded: bool,
    /// This queue's Connect set ATR and no transaction succeeded yet.
    auth_pending: bool,
}

impl Conn {
    fn new(s: TcpStream, shared: Shared, maxh2cdata: u32) -> Conn {
        s.set_nodelay(true).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        Conn {
            s,
            disk: shared.disk,
            faults: shared.faults,
            connects: shared.connects,
            entries: shared.entries,
            auth: shared.auth,
            auth_events: shared.auth_events,
            ctrl_auth: None,
            auth_recorded: false,
            auth_pending: false,
            frame: FrameConfig::before_ic(Role::Controller),
            tx: TxConfig::default(),
            maxh2cdata,
            qid: 0,
            discovery: false,
            cc: 0,
            pending_writes: Default::default(),
        }
    }

    fn run(&mut self) -> std::io::Result<()> {
        let mut buf = vec![0u8; 4 << 20];
        let mut len = 0;
        loop {
            let n = self.s.read(&mut buf[len..])?;
            if n == 0 {
                return Ok(());
            }
            len += n;
            let mut at = 0;
            loop {
                match pdu::decode(&buf[at..len], &self.frame) {
                    Ok(Decoded::NeedMore(_)) => break,
                    Ok(Decoded::Pdu(p, used)) => {
                        let owned = own(p);
                        at += used;
                        if !self.handle(owned)? {
                            return Ok(());
                        }
                    }
                    Err(e) => {
                        let mut out = Vec::new();
                        pdu::encode_term_req(&mut out, true, e.fes, e.fei, &buf[at..len.min(at + 128)]);
                        self.s.write_all(&out)?;
                        return Ok(());
                    }
                }
            }
            buf.copy_within(at..len, 0);
            len -= at;
        }
    }

    fn send(&mut self, b: &[u8]) -> std::io::Result<()> {
        self.s.write_all(b)
    }

    fn resp(&mut self, cid: u16, st: Status, dw0: u32, dw1: u32) -> std::io::Result<()> {
        let mut out = Vec::new();
        let cqe = Cqe { dw0, dw1, sqhd: 0, sqid: self.qid, cid, status: st };
        pdu::encode_capsule_resp(&mut out, &cqe, &self.tx);
        self.send(&out)
    }

    /// Send `data` as C2HData for `cid`, then the CapsuleResp (or SUCCESS).
    fn send_data(&mut self, cid: u16, data: &[u8], corrupt: bool) -> std::io::Result<()> {
        let success = self.faults.c2h_success.load(Ordering::Relaxed);
        let mut out = Vec::new();
        let chunk = self.maxh2cdata as usize;
        let mut off = 0;
        while off < data.len() {
            let n = chunk.min(data.len() - off);
            let last = off + n == data.len();
            let mut f = if last { flags::LAST_PDU } else { 0 };
            if last && success {
                f |= flags::SUCCESS;
            }
            let h = DataHdr { cccid: cid, ttag: 0, offset: off as u32, length: n as u32 };
            pdu::encode_data_pdu(&mut out, true, f, &h, &data[off..off + n], &self.tx);
            if corrupt && off == 0 && self.tx.ddgst {
                let l = out.len();
                out[l - 1] ^= 0xff;
            }
            off += n;
        }
        self.send(&out)?;
        if !success {
            self.resp(cid, Status::SUCCESS, 0, 0)?;
        }
        Ok(())
    }

    fn handle(&mut self, p: OwnedPdu) -> std::io::Result<bool> {
        match p {
            OwnedPdu::IcReq { hpda, dgst } => {
                let pfv = if self.faults.bad_icresp.load(Ordering::Relaxed) { 1 } else { 0 };
                let mut out = Vec::new();
                pdu::encode_ic_resp(&mut out, &IcResp { pfv, cpda: 0, dgst, maxh2cdata: self.maxh2cdata });
                self.send(&out)?;
                let (hd, dd) = (dgst & 1 != 0, dgst & 2 != 0);
                self.frame = FrameConfig {
                    role: Role::Controller,
                    hdgst: hd,
                    ddgst: dd,
                    pdu_len_max: 2 << 20,
                    rx_data_align: 4,
                };
                self.tx = TxConfig { hdgst: hd, ddgst: dd, data_align: (hpda as u32 + 1) * 4 };
                Ok(true)
            }
            OwnedPdu::Term => Ok(false),
            OwnedPdu::Cmd { sqe, data } => self.command(sqe, data),
            OwnedPdu::H2C { hdr, data } => {
                let cid = hdr.cccid;
                let Some((slba, mut buf, mut got)) = self.pending_writes.remove(&cid) else { return Ok(false) };
                assert!(data.len() <= self.maxh2cdata as usize, "H2CData over MAXH2CDATA");
                buf[hdr.offset as usize..hdr.offset as usize + data.len()].copy_from_slice(&data);
                got += data.len();
                if got == buf.len() {
                    self.finish_write(cid, slba, &buf)
                } else {
                    self.pending_writes.insert(cid, (slba, buf, got));
                    Ok(true)
                }
            }
        }
    }

    fn finish_write(&mut self, cid: u16, slba: u64, data: &[u8]) -> std::io::Result<bool> {
        if self.faults.drop_on_write.load(Ordering::Relaxed) > 0 {
            self.faults.drop_on_write.fetch_sub(1, Ordering::Relaxed);
            let _ = self.s.shutdown(std::net::Shutdown::Both);
            return Ok(false);
        }
        let off = slba as usize * BLOCK_SIZE;
        self.disk.lock().unwrap()[off..off + data.len()].copy_from_slice(data);
        self.resp(cid, Status::SUCCESS, 0, 0)?;
        Ok(true)
    }

    fn command(&mut self, sqe: Sqe, data: Vec<u8>) -> std::io::Result<bool> {
        let cid = sqe.cid;
        let ok = Status::SUCCESS;
        let xfer = sqe.sgl1.length as usize;
        if sqe.opcode == admin::FABRICS {
            match sqe.fctype() {
                fctype::CONNECT => {
                    let c = ConnectCmd::parse(&sqe);
                    let d = ConnectData::parse(&data).expect("Connect data in capsule");
                    assert!(sqe.sgl1.is_in_capsule());
                    self.qid = c.qid;
                    self.discovery = d.subnqn == nvmf_proto::DISCOVERY_NQN;
                    if d.subnqn != SUBNQN && !self.discovery {
                        let st = Status::new(sct::COMMAND_SPECIFIC, 0x82).dnr();
                        return self.resp(cid, st, 0x0001_0100, 0).map(|_| true);
                    }
                    if c.qid == 0 {
                        self.connects.fetch_add(1, Ordering::Relaxed);
                    }
                    let atr = self.auth.as_ref().is_some_and(|a| if c.qid == 0 { a.admin_atr } else { a.io_atr });
                    self.auth_pending = atr;
                    // Connect response DW0: CNTLID 1, bit 17 ATR.
                    self.resp(cid, ok, 1 | if atr { 1 << 17 } else { 0 }, 0)?;
                }
                fctype::AUTH_SEND => self.auth_send(&sqe, &data)?,
                fctype::AUTH_RECV => self.auth_receive(&sqe)?,
                fctype::PROPERTY_GET => {
                    let p = PropertyCmd::parse(&sqe);
                    let v = match p.offset {
                        prop::CAP => {
                            Cap { mqes: 127, to_500ms: 2, css_nvm: true, css_io_sets: false, css_admin_only: false }
                                .to_u64()
                        }
                        prop::VS => 0x0001_0400,
                        prop::CC => self.cc as u64,
                        prop::CSTS => {
                            let mut s = if self.cc & cc::EN != 0 { csts::RDY } else { 0 };
                            if self.cc & cc::SHN_MASK != 0 {
                                s |= csts::SHST_COMPLETE;
                            }
                            s as u64
                        }
                        _ => 0,
                    };
                    self.resp(cid, ok, v as u32, (v >> 32) as u32)?;
                }
                fctype::PROPERTY_SET => {
                    let p = PropertyCmd::parse(&sqe);
                    if p.offset == prop::CC {
                        self.cc = p.value as u32;
                    }
                    self.resp(cid, ok, 0, 0)?;
                }
                _ => self.resp(cid, Status::new(sct::GENERIC, generic::INVALID_OPCODE), 0, 0)?,
            }
            return Ok(true);
        }
        if self.auth_pending {
            // Authentication Required, as nvmet answers.
            let status = Status::new(sct::COMMAND_SPECIFIC, nvmf_proto::status::cmd::AUTH_REQUIRED);
            return self.resp(cid, status.dnr(), 0, 0).map(|_| true);
        }
        if self.qid == 0 {
            match sqe.opcode {
                admin::IDENTIFY => {
                    let c = IdentifyCmd::parse(&sqe);
                    let b: Vec<u8> = match c.cns {
                        cns::CONTROLLER => IdentifyController {
                            vid: 0x1b36,
                            serial: "fake0001".into(),
                            model: "nvmf fake target".into(),
                            firmware: "0.1".into(),
                            mdts: 3,
                            cntlid: 1,
                            ver: 0x0001_0400,
                            cntrltype: if self.discovery { cntrltype::DISCOVERY } else { cntrltype::IO },
                            oaes: 1 << 8,
                            sqes: 0x66,
                            cqes: 0x44,
                            kas: 10,
                            nn: 1,
                            sgls: 0x0010_0005,
                            subnqn: if self.discovery { nvmf_proto::DISCOVERY_NQN.into() } else { SUBNQN.into() },
                            ioccsz: 260,
                            iorcsz: 1,
                            msdbd: 1,
                            ..Default::default()
                        }
                        .encode()
                        .to_vec(),
                        cns::NAMESPACE => IdentifyNamespace {
                            nsze: NS_BLOCKS,
                            ncap: NS_BLOCKS,
                            nuse: NS_BLOCKS,
                            nguid: [0xab; 16],
                            eui64: [0xcd; 8],
                            anagrpid: 1,
                            lbaf: vec![LbaFormat { ms: 0, lbads: 9, rp: 0 }],
                            ..Default::default()
                        }
                        .encode()
                        .to_vec(),
                        cns::ACTIVE_NS_LIST => identify::encode_ns_list(&[1], c.nsid).to_vec(),
                        _ => vec![0; 4096],
                    };
                    assert_eq!(xfer, 4096);
                    self.send_data(cid, &b, false)?;
                }
                admin::GET_LOG_PAGE => {
                    let g = GetLogPageCmd::parse(&sqe);
                    let full = if g.lid == lid::DISCOVERY {
                        plog::encode_discovery_log(7, &self.entries.lock().unwrap())
                    } else {
                        vec![0; 4096]
                    };
                    let mut page = vec![0u8; g.len as usize];
                    let start = (g.offset as usize).min(full.len());
                    let n = (full.len() - start).min(page.len());
                    page[..n].copy_from_slice(&full[start..start + n]);
                    self.send_data(cid, &page, false)?;
                }
                admin::SET_FEATURES => {
                    let dw0 = if sqe.cdw10 as u8 == fid::NUM_QUEUES { sqe.cdw11 } else { 0 };
                    self.resp(cid, ok, dw0, 0)?;
                }
                admin::ASYNC_EVENT_REQUEST => {} // held
                admin::KEEP_ALIVE => self.resp(cid, ok, 0, 0)?,
                _ => self.resp(cid, Status::new(sct::GENERIC, generic::INVALID_OPCODE).dnr(), 0, 0)?,
            }
            return Ok(true);
        }
        match sqe.opcode {
            io::READ => {
                if self.faults.ignore_reads.load(Ordering::Relaxed) {
                    return Ok(true);
                }
                if self.faults.term_req_on_read.load(Ordering::Relaxed) {
                    let mut out = Vec::new();
                    pdu::encode_term_req(&mut out, true, fes::PDU_SEQUENCE_ERROR, 0, &[]);
                    self.send(&out)?;
                    return Ok(false);
                }
                let (slba, nlb) = (sqe.slba(), sqe.nlb() as usize);
                if xfer != nlb * BLOCK_SIZE {
                    let st = Status::new(sct::GENERIC, generic::DATA_SGL_LENGTH_INVALID).dnr();
                    return self.resp(cid, st, 0, 0).map(|_| true);
                }
                if slba + nlb as u64 > NS_BLOCKS {
                    let st = Status::new(sct::GENERIC, generic::LBA_OUT_OF_RANGE).dnr();
                    return self.resp(cid, st, 0, 0).map(|_| true);
                }
                if self.faults.c2h_out_of_range.load(Ordering::Relaxed) {
                    let mut out = Vec::new();
                    let h = DataHdr { cccid: cid, ttag: 0, offset: xfer as u32, length: 512 };
                    pdu::encode_data_pdu(&mut out, true, flags::LAST_PDU, &h, &[0; 512], &self.tx);
                    self.send(&out)?;
                    return Ok(true);
                }
                let off = slba as usize * BLOCK_SIZE;
                let data = self.disk.lock().unwrap()[off..off + xfer].to_vec();
                let corrupt = self.faults.corrupt_read_digests.load(Ordering::Relaxed) > 0;
                if corrupt {
                    self.faults.corrupt_read_digests.fetch_sub(1, Ordering::Relaxed);
                }
                self.send_data(cid, &data, corrupt)?;
            }
            io::WRITE => {
                let (slba, nlb) = (sqe.slba(), sqe.nlb() as usize);
                assert_eq!(xfer, nlb * BLOCK_SIZE);
                if slba + nlb as u64 > NS_BLOCKS {
                    let st = Status::new(sct::GENERIC, generic::LBA_OUT_OF_RANGE).dnr();
                    return self.resp(cid, st, 0, 0).map(|_| true);
                }
                if sqe.sgl1.is_in_capsule() {
                    assert!(xfer <= 4096, "in-capsule beyond IOCCSZ");
                    return self.finish_write(cid, slba, &data);
                }
                self.pending_writes.insert(cid, (slba, vec![0; xfer], 0));
                let mut out = Vec::new();
                pdu::encode_r2t(&mut out, &DataHdr { cccid: cid, ttag: 1, offset: 0, length: xfer as u32 }, &self.tx);
                self.send(&out)?;
            }
            io::FLUSH | io::WRITE_ZEROES | io::DATASET_MANAGEMENT => self.resp(cid, ok, 0, 0)?,
            _ => self.resp(cid, Status::new(sct::GENERIC, generic::INVALID_OPCODE).dnr(), 0, 0)?,
        }
        Ok(true)
    }
}

impl Conn {
    fn check_auth_sqe(sqe: &Sqe) {
        assert_eq!(sqe.cdw10, 0xe9 << 24 | 1 << 16 | 1 << 8, "SECP 0xE9, SPSP1 1, SPSP0 1");
    }

    fn auth_send(&mut self, sqe: &Sqe, data: &[u8]) -> std::io::Result<()> {
        Self::check_auth_sqe(sqe);
        assert!(sqe.sgl1.is_in_capsule(), "authentication messages fit in the capsule");
        assert_eq!(sqe.cdw11 as usize, data.len(), "TL is the message length");
        let Some(auth) = &self.auth else {
            return self.resp(sqe.cid, Status::new(sct::GENERIC, generic::INVALID_OPCODE).dnr(), 0, 0);
        };
        // A Negotiate (type 0, id 0) starts a transaction.
        if data.len() >= 6 && data[0] == 0 && data[1] == 0 {
            let t_id = u16::from_le_bytes([data[4], data[5]]);
            self.ctrl_auth = Some((CtrlAuth::new(auth.ctrl.clone()), t_id));
            self.auth_recorded = false;
        }
        if let Some((ctrl, _)) = &mut self.ctrl_auth {
            ctrl.on_send(data);
        }
        self.note_auth_status();
        self.resp(sqe.cid, Status::SUCCESS, 0, 0)
    }

    fn auth_receive(&mut self, sqe: &Sqe) -> std::io::Result<()> {
        Self::check_auth_sqe(sqe);
        if self.faults.ignore_auth_receive.load(Ordering::Relaxed) {
            return Ok(());
        }
        let Some((ctrl, _)) = &mut self.ctrl_auth else {
            return self.resp(sqe.cid, Status::new(sct::GENERIC, generic::COMMAND_SEQUENCE_ERROR).dnr(), 0, 0);
        };
        // Linux targets return all AL bytes, zero padded.
        let mut msg = ctrl.receive();
        msg.resize(sqe.cdw11 as usize, 0);
        self.note_auth_status();
        self.send_data(sqe.cid, &msg, false)
    }

    /// Record the end of a transaction once (and lift the ATR gate on success).
    fn note_auth_status(&mut self) {
        let Some((ctrl, t_id)) = &mut self.ctrl_auth else { return };
        let status = ctrl.status();
        if status == CtrlStatus::InProgress || self.auth_recorded {
            return;
        }
        self.auth_recorded = true;
        self.auth_events.lock().unwrap().push(AuthEvent {
            qid: self.qid,
            t_id: *t_id,
            status,
            bidirectional: ctrl.authenticated().is_some_and(|a| a.bidirectional),
        });
        if status == CtrlStatus::Authenticated {
            self.auth_pending = false;
        }
    }
}

enum OwnedPdu {
    IcReq { hpda: u8, dgst: u8 },
    Cmd { sqe: Sqe, data: Vec<u8> },
    H2C { hdr: DataHdr, data: Vec<u8> },
    Term,
}

fn own(p: Pdu<'_>) -> OwnedPdu {
    match p {
        Pdu::IcReq(ic) => OwnedPdu::IcReq { hpda: ic.hpda, dgst: ic.dgst },
        Pdu::CapsuleCmd { sqe, data, data_digest_ok } => {
            assert!(data_digest_ok, "host sent a bad data digest");
            OwnedPdu::Cmd { sqe, data: data.to_vec() }
        }
        Pdu::H2CData { hdr, data, data_digest_ok, .. } => {
            assert!(data_digest_ok, "host sent a bad data digest");
            OwnedPdu::H2C { hdr, data: data.to_vec() }
        }
        _ => OwnedPdu::Term,
    }
}

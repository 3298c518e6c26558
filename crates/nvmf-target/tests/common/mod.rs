//! A minimal NVMe/TCP test host over `std::net::TcpStream`, built on
//! nvmf_proto, and a loopback target on 127.0.0.1:0.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use nvmf_proto::cqe::Cqe;
use nvmf_proto::fabrics::{cc, prop, ConnectCmd, ConnectData, PropertyCmd, CATTR_DISABLE_SQ_FLOW_CONTROL};
use nvmf_proto::identify::IdentifyCmd;
use nvmf_proto::pdu::{self, encode_capsule_cmd, encode_data_pdu, encode_ic_req, flags, DataHdr, IcReq, TxConfig};
use nvmf_proto::{decode, Decoded, FrameConfig, Pdu, Role, Sgl, Sqe};
use nvmf_target::config::{DiscoveryConfig, Limits, ListenerConfig, NamespaceConfig, SubsystemConfig, TargetConfig};
use nvmf_target::Server;

pub const NQN: &str = "nqn.2026-11.io.nvmf:loop";
pub const NQN_RESTRICTED: &str = "nqn.2026-11.io.nvmf:restricted";
pub const HOSTNQN: &str = "nqn.2014-08.org.nvmexpress:uuid:11111111-2222-3333-4444-555555555555";
pub const ALLOWED_HOST: &str = "nqn.2026-11.io.nvmf:host:allowed";

pub fn ns(nsid: u32, size: &str, bs: u32) -> NamespaceConfig {
    let mut n = NamespaceConfig::ram(size);
    n.nsid = Some(nsid);
    n.block_size = Some(bs);
    n
}

/// Loopback target: RAM namespaces (1: 4 MiB/512, 2: 1 MiB/4096) in NQN,
/// a restricted subsystem, small PDU limits so that transfers split.
pub fn start_target(limits: Limits) -> Server {
    let mut sub = SubsystemConfig::with_namespaces(NQN, vec![ns(1, "4MiB", 512), ns(2, "1MiB", 4096)]);
    sub.allow_any_host = Some(true);
    let mut restricted = SubsystemConfig::with_namespaces(NQN_RESTRICTED, vec![ns(1, "1MiB", 512)]);
    restricted.allow_any_host = Some(false);
    restricted.allowed_hosts = vec![ALLOWED_HOST.into()];
    let cfg = TargetConfig {
        engine: nvmf_target::config::EngineSection { mode: "interrupt".into(), ..Default::default() },
        limits,
        listeners: vec![ListenerConfig {
            addr: "127.0.0.1:0".into(),
            port_id: None,
            subsystems: Vec::new(),
            tls: Default::default(),
        }],
        discovery: DiscoveryConfig { listen: vec!["127.0.0.1:0".into()], referrals: Vec::new() },
        subsystems: vec![sub, restricted],
    };
    nvmf_target::serve(&cfg).expect("serve")
}

pub fn small_limits() -> Limits {
    Limits {
        max_h2c_data_bytes: 16 * 1024,
        max_c2h_data_bytes: 16 * 1024,
        in_capsule_data_bytes: 8192,
        mdts_bytes: 256 * 1024,
        ..Limits::default()
    }
}

/// An owned PDU as the host sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HPdu {
    IcResp(pdu::IcResp),
    Term { fes: u16, fei: u32 },
    Resp(Cqe),
    C2H { hdr: DataHdr, flags: u8, pdo: u8, data: Vec<u8>, digest_ok: bool },
    R2T(DataHdr),
}

pub struct Host {
    pub s: TcpStream,
    rx: Vec<u8>,
    pub frame: FrameConfig,
    pub tx: TxConfig,
    next_cid: u16,
    pub maxh2c: u32,
}

impl Host {
    pub fn tcp(addr: SocketAddr) -> Host {
        let s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.set_nodelay(true).unwrap();
        Host {
            s,
            rx: Vec::new(),
            frame: FrameConfig::before_ic(Role::Host),
            tx: TxConfig::default(),
            next_cid: 1,
            maxh2c: 0,
        }
    }

    /// TCP connect + IC exchange.
    pub fn ic(addr: SocketAddr, hdgst: bool, ddgst: bool, hpda: u8) -> Host {
        let mut h = Host::tcp(addr);
        let mut out = Vec::new();
        let dg = (hdgst as u8) | ((ddgst as u8) << 1);
        encode_ic_req(&mut out, &IcReq { pfv: 0, hpda, dgst: dg, maxr2t: 0 });
        h.s.write_all(&out).unwrap();
        h.frame.pdu_len_max = 16 << 20;
        match h.recv() {
            HPdu::IcResp(r) => {
                assert_eq!(r.dgst, dg, "digests echoed");
                assert!(r.maxh2cdata >= 4096);
                h.maxh2c = r.maxh2cdata;
            }
            other => panic!("expected ICResp, got {other:?}"),
        }
        h.frame =
            FrameConfig { role: Role::Host, hdgst, ddgst, pdu_len_max: 16 << 20, rx_data_align: (hpda as u32 + 1) * 4 };
        h.tx = TxConfig { hdgst, ddgst, data_align: 4 };
        h
    }

    pub fn send_raw(&mut self, b: &[u8]) {
        self.s.write_all(b).unwrap();
    }

    pub fn cid(&mut self) -> u16 {
        self.next_cid = self.next_cid.wrapping_add(1);
        self.next_cid
    }

    /// Read one PDU.
    pub fn recv(&mut self) -> HPdu {
        self.try_recv().expect("connection closed while waiting for a PDU")
    }

    /// Read one PDU, or None on EOF.
    pub fn try_recv(&mut self) -> Option<HPdu> {
        loop {
            let r = decode(&self.rx, &self.frame).expect("target sent a malformed PDU");
            if let Decoded::Pdu(p, n) = r {
                let pdo = self.rx[3];
                let owned = match p {
                    Pdu::IcResp(r) => HPdu::IcResp(r),
                    Pdu::TermReq { fes, fei, .. } => HPdu::Term { fes, fei },
                    Pdu::CapsuleResp(c) => HPdu::Resp(c),
                    Pdu::C2HData { hdr, flags, data, data_digest_ok } => {
                        HPdu::C2H { hdr, flags, pdo, data: data.to_vec(), digest_ok: data_digest_ok }
                    }
                    Pdu::R2T(h) => HPdu::R2T(h),
                    other => panic!("unexpected PDU {other:?}"),
                };
                self.rx.drain(..n);
                return Some(owned);
            }
            let mut b = [0u8; 65536];
            match self.s.read(&mut b) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.rx.extend_from_slice(&b[..n]),
            }
        }
    }

    /// True when the target closed the connection (EOF) within the read timeout.
    pub fn closed_by_peer(&mut self) -> bool {
        let mut b = [0u8; 4096];
        loop {
            match self.s.read(&mut b) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
    }

    pub fn send_cmd(&mut self, sqe: &Sqe, data: &[u8]) {
        let mut out = Vec::new();
        encode_capsule_cmd(&mut out, sqe, data, &self.tx);
        self.s.write_all(&out).unwrap();
    }

    /// Run a command to completion: sends in-capsule data when `in_capsule`,
    /// answers R2Ts from `write`, collects C2H data. Returns (cqe, data read).
    pub fn exec(&mut self, mut sqe: Sqe, write: &[u8], in_capsule: bool) -> (Cqe, Vec<u8>) {
        if sqe.cid == 0 {
            sqe.cid = self.cid();
        }
        if !write.is_empty() && in_capsule {
            sqe.sgl1 = Sgl::in_capsule(0, write.len() as u32);
            self.send_cmd(&sqe, write);
        } else {
            if !write.is_empty() {
                sqe.sgl1 = Sgl::transport(write.len() as u32);
            }
            self.send_cmd(&sqe, &[]);
        }
        let mut read = Vec::new();
        loop {
            match self.recv() {
                HPdu::Resp(c) => {
                    assert_eq!(c.cid, sqe.cid);
                    return (c, read);
                }
                HPdu::C2H { hdr, flags: f, pdo, data, digest_ok } => {
                    assert_eq!(hdr.cccid, sqe.cid);
                    assert!(digest_ok, "C2H data digest");
                    assert_eq!(pdo as u32 % self.frame.rx_data_align.max(4), 0, "PDO honours HPDA");
                    assert_eq!(hdr.offset as usize, read.len(), "C2H in order");
                    read.extend_from_slice(&data);
                    if f & flags::SUCCESS != 0 {
                        assert!(f & flags::LAST_PDU != 0);
                        return (Cqe::new(sqe.cid, nvmf_proto::Status::SUCCESS), read);
                    }
                }
                HPdu::R2T(r) => {
                    assert_eq!(r.cccid, sqe.cid);
                    let end = (r.offset + r.length) as usize;
                    let mut off = r.offset as usize;
                    let mut out = Vec::new();
                    while off < end {
                        let n = (end - off).min(self.maxh2c as usize);
                        let last = off + n == end;
                        let hdr = DataHdr { cccid: r.cccid, ttag: r.ttag, offset: off as u32, length: n as u32 };
                        encode_data_pdu(
                            &mut out,
                            false,
                            if last { flags::LAST_PDU } else { 0 },
                            &hdr,
                            &write[off..off + n],
                            &self.tx,
                        );
                        off += n;
                    }
                    self.s.write_all(&out).unwrap();
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    /// Fabrics Connect; returns the completion.
    pub fn connect(&mut self, qid: u16, sqsize: u16, kato_ms: u32, subnqn: &str, hostnqn: &str, cntlid: u16) -> Cqe {
        let c = ConnectCmd { recfmt: 0, qid, sqsize, cattr: CATTR_DISABLE_SQ_FLOW_CONTROL, kato_ms };
        let sqe = c.to_sqe(self.cid());
        let d = ConnectData { hostid: [7; 16], cntlid, subnqn: subnqn.into(), hostnqn: hostnqn.into() };
        self.exec(sqe, &d.encode(), true).0
    }

    pub fn prop_get(&mut self, off: u32, size8: bool) -> u64 {
        let sqe = PropertyCmd::get_sqe(self.cid(), off, size8);
        let (c, _) = self.exec(sqe, &[], true);
        assert!(c.status.is_success(), "property get {off:#x}: {}", c.status);
        c.result64()
    }

    pub fn enable(&mut self) {
        let sqe = PropertyCmd::set_sqe(self.cid(), prop::CC, false, cc::LINUX_ENABLE as u64);
        let (c, _) = self.exec(sqe, &[], true);
        assert!(c.status.is_success());
        assert_eq!(self.prop_get(prop::CSTS, false) & 1, 1, "CSTS.RDY");
    }

    pub fn identify(&mut self, cns: u8, nsid: u32) -> (Cqe, Vec<u8>) {
        let sqe = IdentifyCmd { cns, cntid: 0, csi: 0, nsid }.to_sqe(self.cid());
        self.exec(sqe, &[], true)
    }
}

/// Admin queue connected and enabled to `NQN`; returns (host, cntlid).
pub fn admin(addr: SocketAddr, hd: bool, dd: bool, kato_ms: u32) -> (Host, u16) {
    let mut h = Host::ic(addr, hd, dd, 0);
    let c = h.connect(0, 31, kato_ms, NQN, HOSTNQN, 0xffff);
    assert!(c.status.is_success(), "admin connect: {}", c.status);
    h.enable();
    (h, c.dw0 as u16)
}

pub fn io_queue(addr: SocketAddr, cntlid: u16, qid: u16, hd: bool, dd: bool, hpda: u8) -> Host {
    let mut h = Host::ic(addr, hd, dd, hpda);
    let c = h.connect(qid, 31, 0, NQN, HOSTNQN, cntlid);
    assert!(c.status.is_success(), "io connect: {}", c.status);
    h
}

pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 9) as u8).collect()
}

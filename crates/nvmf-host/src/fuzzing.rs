//! Fuzz entry point for the host queue, shared by `fuzz/fuzz_targets/host_queue.rs`
//! and the corpus replay test, so CI re-checks every kept input on stable Rust.

use nvmf_proto::opcodes::io;
use nvmf_proto::pdu::{self, IcResp};
use nvmf_proto::Sqe;

use crate::queue::{HostQueue, QueueConfig, Request};

/// Bring a queue to Ready with a valid ICResp (digests chosen by the first
/// input byte), submit a read, a large write (R2T path) and an in-capsule
/// write and a 64 KiB read, then feed the rest of the input as controller
/// bytes in a few chunkings; the last one also hands payload bytes to
/// [`HostQueue::recv_sink`] whenever the queue offers it, as the engine's
/// direct receive does. Must never panic, hang, or grow memory without bound.
pub fn host_queue_input(data: &[u8]) {
    let Some((&sel, rest)) = data.split_first() else { return };
    let (hdgst, ddgst) = (sel & 1 != 0, sel & 2 != 0);
    for chunk in [usize::MAX, 1, 13, 4000] {
        let use_sink = chunk == 4000;
        let cfg = QueueConfig {
            hdr_digest: hdgst,
            data_digest: ddgst,
            hpda: if sel & 4 != 0 { 7 } else { 0 },
            command_timeout_ms: 5,
            // Lent write payloads: the completion must still come exactly once.
            h2c_data_borrowed: sel & 8 != 0,
            ..QueueConfig::io(1, 8)
        };
        let mut q = HostQueue::new(cfg);
        q.clear_output();
        let mut ic = Vec::new();
        let dgst = (hdgst as u8) | ((ddgst as u8) << 1);
        let maxh2cdata = if sel & 8 != 0 { 32768 } else { 8192 };
        pdu::encode_ic_resp(&mut ic, &IcResp { pfv: 0, cpda: 0, dgst, maxh2cdata });
        assert_eq!(q.receive(&ic), Ok(128));
        assert!(q.is_ready());
        q.set_in_capsule_data_max_bytes(4096);
        let _ = q.submit(Request::read(Sqe::rw(io::READ, 0, 1, 0, 8), vec![0; 4096]), 0);
        let _ = q.submit(Request::write(Sqe::rw(io::WRITE, 0, 1, 8, 64), vec![1; 32768]), 0);
        let _ = q.submit(Request::write(Sqe::rw(io::WRITE, 0, 1, 0, 1), vec![2; 512]), 0);
        let _ = q.submit(Request::read(Sqe::rw(io::READ, 0, 1, 16, 128), vec![0; 65536]), 0);
        q.clear_output();
        let mut buf: Vec<u8> = Vec::new();
        let mut fed = 0;
        let mut now = 0;
        let mut expired = Vec::new();
        while fed < rest.len() {
            if use_sink && buf.is_empty() {
                if let Some(sink) = q.recv_sink() {
                    let n = sink.len().min(rest.len() - fed).min(chunk);
                    sink[..n].copy_from_slice(&rest[fed..fed + n]);
                    fed += n;
                    let r = q.sink_received(n);
                    while q.pop_completion().is_some() {}
                    if r.is_err() {
                        break;
                    }
                    continue;
                }
            }
            let n = chunk.min(rest.len() - fed);
            buf.extend_from_slice(&rest[fed..fed + n]);
            fed += n;
            let r = q.receive(&buf);
            if sel & 16 != 0 {
                // Hold the loans until the end: completions park meanwhile.
                q.take_output(|_| {});
            } else {
                q.clear_output();
            }
            while q.pop_completion().is_some() {}
            now += 1;
            q.on_tick(now, &mut expired);
            match r {
                Ok(used) => {
                    assert!(used <= buf.len());
                    buf.drain(..used);
                    assert!(buf.len() <= q.rx_pdu_len_max() + 8 + rest.len(), "buffer bound");
                }
                Err(_) => break,
            }
        }
        q.fail("fuzz input ended");
        q.release_output();
        while q.pop_completion().is_some() {}
        assert_eq!(q.outstanding(), 0, "a failed queue completes everything exactly once");
    }
}

//! The session's data path once the handshake is done: records opened into
//! the caller's buffers, plaintext sealed into records, KeyUpdate, alerts
//! and close_notify. All of it runs on the record layer (`crate::record`);
//! OpenSSL is no longer involved.

use std::mem::MaybeUninit;

use super::TlsSession;
use crate::record::{Fatal, Writer};
use crate::{TlsError, MAX_PLAINTEXT};

impl TlsSession {
    /// After the handshake: open the records at the start of `input`
    /// (decrypting them in place) and copy their data to `out`. Returns
    /// (bytes of `input` done with, plaintext bytes written). The caller
    /// drops the first of those from its buffer and passes the rest,
    /// unchanged, followed by new ciphertext, next time. Before the handshake
    /// ends: (0, 0). Answers (KeyUpdate) and alerts go to the ciphertext.
    pub fn open_into(&mut self, input: &mut [u8], out: &mut [u8]) -> Result<(usize, usize), TlsError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let Some(r) = self.records.as_mut() else { return Ok((0, 0)) };
        let outbound = &mut self.stream.get_mut().outbound;
        match r.open(input, out, outbound) {
            Ok(o) => {
                self.peer_closed = r.peer_closed();
                Ok((o.consumed, o.produced))
            }
            Err(f) => Err(self.fatal(f)),
        }
    }

    /// A fatal record-layer error: our alert (if any) goes out, the session
    /// fails.
    pub(super) fn fatal(&mut self, f: Fatal) -> TlsError {
        if let (Some(alert), Some(r)) = (f.alert, self.records.as_mut()) {
            let _ = r.seal_alert(&mut self.stream.get_mut().outbound, alert);
        }
        self.closed = true;
        self.failed = Some(f.error.clone());
        f.error
    }

    /// Decrypted application data available now, appended to `out` (at most
    /// `max` bytes). 0 with [`TlsSession::peer_closed`] true: the peer closed.
    pub fn read_plaintext(&mut self, out: &mut Vec<u8>, max: usize) -> Result<usize, TlsError> {
        let mut got = 0;
        while got < max {
            let want = (max - got).min(4 * MAX_PLAINTEXT);
            out.reserve(want);
            let spare = &mut out.spare_capacity_mut()[..want];
            let r = self.read_uninit(spare);
            if r.is_err() && got > 0 {
                // As in read_plaintext_into: the error comes with the next call.
                break;
            }
            match r? {
                0 => break,
                n => {
                    // SAFETY: `read_uninit` initialised the first `n` bytes of
                    // the spare capacity (SSL_read_ex contract).
                    unsafe { out.set_len(out.len() + n) };
                    got += n;
                }
            }
        }
        Ok(got)
    }

    /// Like [`TlsSession::read_plaintext`] into a slice (e.g. straight into a
    /// command's data buffer).
    pub fn read_plaintext_into(&mut self, buf: &mut [u8]) -> Result<usize, TlsError> {
        let mut got = 0;
        while got < buf.len() {
            // SAFETY: u8 → MaybeUninit<u8> has the same layout, and the read
            // only writes initialised bytes.
            let spare = unsafe {
                std::slice::from_raw_parts_mut(buf[got..].as_mut_ptr().cast::<MaybeUninit<u8>>(), buf.len() - got)
            };
            match self.read_uninit(spare) {
                Ok(0) => break,
                Ok(n) => got += n,
                // What was decrypted before the bad record is delivered; the
                // error (kept in the session) comes with the next call.
                Err(_) if got > 0 => break,
                Err(e) => return Err(e),
            }
        }
        Ok(got)
    }

    fn read_uninit(&mut self, buf: &mut [MaybeUninit<u8>]) -> Result<usize, TlsError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        if !self.established || self.peer_closed || buf.is_empty() {
            return Ok(0);
        }
        // SAFETY: the record layer only writes `buf` (copy_from_slice and
        // the AEAD's output), and reports how many bytes from its start it
        // wrote; u8 and MaybeUninit<u8> have the same layout. Writing a u8
        // into uninitialised memory through a &mut [u8] is what read(2)
        // wrappers do; no byte is read before it is written.
        let buf = unsafe { std::slice::from_raw_parts_mut(buf.as_mut_ptr().cast::<u8>(), buf.len()) };
        self.open_inbound(buf)
    }

    /// Open the fed records into `buf` (see [`TlsSession::open_into`]).
    pub(super) fn open_inbound(&mut self, buf: &mut [u8]) -> Result<usize, TlsError> {
        let io = self.stream.get_mut();
        let mut input = std::mem::take(&mut io.inbound);
        let pos = io.in_pos;
        let r = self.open_into(&mut input[pos..], buf);
        let io = self.stream.get_mut();
        io.inbound = input;
        let (consumed, produced) = r?;
        io.in_pos += consumed;
        if io.in_pos == io.inbound.len() {
            io.inbound.clear();
            io.in_pos = 0;
        }
        Ok(produced)
    }

    /// Encrypt application data; returns how much was taken (less than
    /// `data.len()` once [`Limits::outbound_max`] bytes of ciphertext wait:
    /// take the ciphertext, then write the rest).
    pub fn write_plaintext(&mut self, data: &[u8]) -> Result<usize, TlsError> {
        self.writable()?;
        let pending = self.stream.get_ref().out_pending();
        if pending >= self.limits.outbound_max {
            return Ok(0);
        }
        let room = (self.limits.outbound_max - pending).max(MAX_PLAINTEXT);
        let n = room.min(data.len());
        let r = self.records.as_mut().expect("established");
        r.seal_app(&mut self.stream.get_mut().outbound, &data[..n]).map_err(|e| self.internal(e))?;
        Ok(n)
    }

    /// Encrypt application data given in pieces, gathered into records of
    /// up to 2^14 bytes (each piece copied once, into the ciphertext
    /// buffer). All of it is taken: the caller bounds what it writes.
    pub fn write_gathered<'a>(&mut self, pieces: impl IntoIterator<Item = &'a [u8]>) -> Result<(), TlsError> {
        self.writable()?;
        let r = self.records.as_mut().expect("established");
        let outbound = &mut self.stream.get_mut().outbound;
        let mut w = Writer::default();
        let mut result = Ok(());
        for piece in pieces {
            result = w.push(r, outbound, piece);
            if result.is_err() {
                break;
            }
        }
        let result = result.and_then(|()| w.finish(r, outbound));
        result.map_err(|e| self.internal(e))
    }

    fn writable(&self) -> Result<(), TlsError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        if self.closed {
            return Err(TlsError::Closed);
        }
        if !self.established {
            return Err(TlsError::NotReady);
        }
        Ok(())
    }

    /// An error of our own (a failed seal): fatal, internal_error alert.
    fn internal(&mut self, e: TlsError) -> TlsError {
        self.fatal(Fatal { alert: Some(80), error: e })
    }

    /// Send a KeyUpdate now (its record is in the ciphertext) and switch
    /// our sending keys; `request_peer`: ask the peer to update its sending
    /// keys too.
    pub fn key_update(&mut self, request_peer: bool) -> Result<(), TlsError> {
        self.writable()?;
        let r = self.records.as_mut().expect("established");
        r.key_update(&mut self.stream.get_mut().outbound, request_peer).map_err(|e| self.internal(e))
    }

    /// Send close_notify (in the ciphertext); no more writes afterwards.
    pub fn close(&mut self) {
        if self.closed || self.failed.is_some() {
            return;
        }
        self.closed = true;
        match self.records.as_mut() {
            Some(r) => {
                let _ = r.seal_alert(&mut self.stream.get_mut().outbound, 0);
            }
            // During the handshake OpenSSL sends its own close_notify.
            None => {
                let _ = self.stream.shutdown();
            }
        }
    }
}

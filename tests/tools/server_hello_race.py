#!/usr/bin/env python3
"""Races every handshake of a dtun client with forged ServerHellos sent to its server.

Usage: server_hello_race.py IFACE DPORT SECONDS COPIES SUITE_HEX
Runs in the client's namespace: watches IFACE for ClientHellos leaving towards DPORT and, for
each, sends COPIES forged ServerHellos choosing SUITE_HEX (e.g. c0a8, AES-128-CCM_8) from the
ClientHello's own source address and port to its destination, spread over the next 10 ms (a handshake between namespaces takes a few)
(raw IPv4, IP_HDRINCL). A server that read the negotiated suite off any ServerHello passing
through switched its record layer and the session failed. Prints "watching", one line per
ClientHello seen ("ClientHello from A:P"), one per forged datagram ("forged N"), a summary line, and exits 0 after SECONDS. Standard library only;
shares the raw-packet helpers of inject.py.
"""
import os
import socket
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import inject  # noqa: E402


# Forged copies go out within this many seconds of the ClientHello: a handshake between two
# namespaces takes a few milliseconds.
SPREAD = 0.01


def server_hello(suite, seq):
    body = b"\xfe\xfd" + os.urandom(32) + b"\x00" + suite + b"\x00" + b"\x00\x04\x00\x17\x00\x00"
    msg = bytes([2]) + len(body).to_bytes(3, "big") + b"\x00\x01" + b"\x00\x00\x00" + len(body).to_bytes(3, "big") + body
    return bytes([22]) + b"\xfe\xfd" + b"\x00\x00" + seq.to_bytes(6, "big") + len(msg).to_bytes(2, "big") + msg


def main():
    iface, dport, seconds, copies, suite = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), bytes.fromhex(sys.argv[5])
    sniff = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(inject.ETH_P_ALL))
    sniff.bind((iface, 0))
    sniff.settimeout(0.05)
    raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    raw.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1)
    print("watching", flush=True)
    end = time.monotonic() + seconds
    pending = []  # (when, src, dst, sport, dport)
    hellos = sent = 0
    while time.monotonic() < end:
        now = time.monotonic()
        for p in [p for p in pending if p[0] <= now]:
            pending.remove(p)
            _, src, dst, sport, dp = p
            for pkt in inject.ip_packets(src, dst, inject.udp_datagram(src, dst, sport, dp, server_hello(suite, 1000 + sent))):
                raw.sendto(pkt, (dst, 0))
            sent += 1
            print(f"forged {sent}", flush=True)
        sniff.settimeout(0.0005 if pending else 0.05)
        try:
            frame, addr = sniff.recvfrom(65535)
        except socket.timeout:
            continue
        if addr[2] != inject.PACKET_OUTGOING or len(frame) < 14 + 20 + 8 + 26:
            continue
        if struct.unpack("!H", frame[12:14])[0] != inject.ETH_P_IP:
            continue
        ip = frame[14:]
        ihl = (ip[0] & 0x0F) * 4
        if ip[9] != 17:
            continue
        sport, dp = struct.unpack("!HH", ip[ihl:ihl + 4])
        payload = ip[ihl + 8:]
        if dp != dport or payload[0] != 22 or payload[3:5] != b"\x00\x00" or payload[13] != 1:
            continue
        src, dst = socket.inet_ntoa(ip[12:16]), socket.inet_ntoa(ip[16:20])
        hellos += 1
        print(f"ClientHello from {src}:{sport}", flush=True)
        for i in range(copies):
            pending.append((time.monotonic() + SPREAD * i / copies, src, dst, sport, dp))
    print(f"done hellos={hellos} forged={sent}", flush=True)


if __name__ == "__main__":
    main()

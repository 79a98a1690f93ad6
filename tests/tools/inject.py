#!/usr/bin/env python3
"""Capture one DTLS application-data datagram leaving an interface, then re-send altered
copies of it from the same source address, to test a receiver's record checks.

Run it inside the sender's network namespace (root needed for AF_PACKET and raw sockets):

    inject.py --iface eth0 --dport 443 --modes corrupt,replay [--timeout 10]

It prints "listening on IFACE" once capturing, then one line per datagram sent, and exits 0;
it exits 1 if no matching datagram left the interface within the timeout.

Modes, each one datagram, sent in the order given:
  replay        the datagram verbatim: its sequence number was already accepted.
  corrupt       one ciphertext byte of the first record flipped, and its sequence number moved
                far ahead so that the replay check does not catch it first (a receiver that
                moved its window for it would reject the records that follow).
  truncated     the first record cut to half its body: its length field points past the end.
  bad_epoch     the first record with epoch + 1 and a fresh sequence number.
  oversized     a record whose body is larger than TLS allows (16 KiB plaintext + 25), sent as
                hand-made IP fragments.
  unknown_peer  from another source port, where no session exists: the datagram verbatim, or,
                when it is a connection ID record (by which the server would find the session
                wherever it comes from), a plain application-data record of the same epoch,
                sequence number and body.

A captured record may be a plain application-data record (type 23) or, from a client that
roams, a connection ID record (RFC 9146, type 25, whose header holds an 8-byte CID before the
length); the modes alter either in the same places (docs/PROTOCOL.md).

Python standard library only.
"""

import argparse
import os
import socket
import struct
import sys
import time

ETH_P_ALL = 0x0003
ETH_P_IP = 0x0800
PACKET_OUTGOING = 4
CONTENT_APPLICATION_DATA = 0x17
CONTENT_TLS12_CID = 0x19
RECORD_HEADER_LEN = 13
CID_LEN = 8
MAX_SEQ = (1 << 48) - 1
# Far enough ahead of the real sequence numbers that they never reach it during a test.
SEQ_JUMP = 1_000_000
# Largest plaintext TLS allows, plus 8 bytes explicit nonce and a 16-byte tag (GCM; CCM_8's is
# 8), plus one: oversized under either suite.
OVERSIZED_BODY = (1 << 14) + 8 + 16 + 1
# IP payload bytes per fragment: a multiple of 8 that fits a 1500-byte MTU.
FRAGMENT_PAYLOAD = 1480


def checksum(data):
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def udp_datagram(src, dst, sport, dport, payload):
    length = 8 + len(payload)
    pseudo = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, 17, length)
    header = struct.pack("!HHHH", sport, dport, length, 0)
    csum = checksum(pseudo + header + payload) or 0xFFFF
    return struct.pack("!HHHH", sport, dport, length, csum) + payload


def ip_packets(src, dst, ip_payload):
    """IPv4 packets carrying ip_payload (UDP header + data), fragmented when needed."""
    ident = int.from_bytes(os.urandom(2), "big")
    chunks = [ip_payload[i : i + FRAGMENT_PAYLOAD] for i in range(0, len(ip_payload), FRAGMENT_PAYLOAD)]
    packets = []
    for n, chunk in enumerate(chunks):
        more = 0x2000 if n < len(chunks) - 1 else 0
        frag = more | (n * FRAGMENT_PAYLOAD // 8)
        header = struct.pack(
            "!BBHHHBBH4s4s",
            0x45, 0, 20 + len(chunk), ident, frag, 64, 17, 0,
            socket.inet_aton(src), socket.inet_aton(dst),
        )
        header = header[:10] + struct.pack("!H", checksum(header)) + header[12:]
        packets.append(header + chunk)
    return packets


def capture(iface, dport, timeout):
    """First outgoing IPv4/UDP datagram to dport whose payload starts with an
    application-data record: returns (src, dst, sport, dport, payload)."""
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.bind((iface, 0))
    sock.settimeout(0.2)
    print(f"listening on {iface}", flush=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            frame, addr = sock.recvfrom(65535)
        except socket.timeout:
            continue
        if addr[2] != PACKET_OUTGOING or len(frame) < 14 + 20 + 8:
            continue
        if struct.unpack("!H", frame[12:14])[0] != ETH_P_IP:
            continue
        ip = frame[14:]
        ihl = (ip[0] & 0x0F) * 4
        total = struct.unpack("!H", ip[2:4])[0]
        frag = struct.unpack("!H", ip[6:8])[0]
        if ip[9] != 17 or frag & 0x3FFF:
            continue
        udp = ip[ihl:total]
        sport, dp = struct.unpack("!HH", udp[:4])
        payload = udp[8:]
        if dp != dport or len(payload) < header_len(payload) or payload[0] not in (
            CONTENT_APPLICATION_DATA,
            CONTENT_TLS12_CID,
        ):
            continue
        sock.close()
        return socket.inet_ntoa(ip[12:16]), socket.inet_ntoa(ip[16:20]), sport, dp, bytes(payload)
    sock.close()
    return None


def header_len(record):
    """13 bytes, or 21 for a connection ID record (the CID before the length field)."""
    return RECORD_HEADER_LEN + (CID_LEN if record[:1] == bytes([CONTENT_TLS12_CID]) else 0)


def first_record(datagram):
    h = header_len(datagram)
    length = struct.unpack("!H", datagram[h - 2 : h])[0]
    return bytearray(datagram[: h + length])


def plain(record):
    """A connection ID record as a plain application-data record (same epoch, sequence
    number and body); a plain one as it is."""
    h = header_len(record)
    if h == RECORD_HEADER_LEN:
        return bytes(record)
    return bytes([CONTENT_APPLICATION_DATA]) + bytes(record[1:11]) + bytes(record[h - 2 :])


def seq_of(record):
    return int.from_bytes(record[5:11], "big")


def with_seq(record, seq):
    record[5:11] = (seq & MAX_SEQ).to_bytes(6, "big")
    return record


def altered(mode, datagram):
    """(payload, source port offset) for one mode."""
    if mode == "replay":
        return datagram, 0
    if mode == "unknown_peer":
        return plain(first_record(datagram)), 1
    rec = first_record(datagram)
    h = header_len(rec)
    body_len = len(rec) - h
    if mode == "corrupt":
        rec = with_seq(rec, seq_of(rec) + SEQ_JUMP)
        # First ciphertext byte after the explicit nonce (or the last byte if the body is short).
        at = h + 8 if body_len > 8 else len(rec) - 1
        rec[at] ^= 0x01
        return bytes(rec), 0
    if mode == "truncated":
        return bytes(rec[: h + body_len // 2]), 0
    if mode == "bad_epoch":
        epoch = int.from_bytes(rec[3:5], "big")
        rec[3:5] = ((epoch + 1) & 0xFFFF).to_bytes(2, "big")
        rec = with_seq(rec, seq_of(rec) + SEQ_JUMP + 1)
        return bytes(rec), 0
    if mode == "oversized":
        rec = with_seq(rec, seq_of(rec) + SEQ_JUMP + 2)
        head = rec[: h - 2] + struct.pack("!H", OVERSIZED_BODY)
        return bytes(head) + os.urandom(OVERSIZED_BODY), 0
    raise SystemExit(f"unknown mode {mode}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iface", required=True)
    ap.add_argument("--dport", type=int, required=True)
    ap.add_argument("--modes", required=True, help="comma-separated, see the module docstring")
    ap.add_argument("--timeout", type=float, default=10.0)
    args = ap.parse_args()

    got = capture(args.iface, args.dport, args.timeout)
    if got is None:
        print(f"no application-data datagram to port {args.dport} seen on {args.iface}", flush=True)
        return 1
    src, dst, sport, dport, datagram = got
    print(
        f"captured {len(datagram)} bytes {src}:{sport} -> {dst}:{dport} "
        f"epoch={int.from_bytes(datagram[3:5], 'big')} seq={seq_of(datagram)}",
        flush=True,
    )
    raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    for mode in args.modes.split(","):
        payload, port_offset = altered(mode, datagram)
        port = sport + port_offset if sport + port_offset <= 0xFFFF else sport - port_offset
        udp = udp_datagram(src, dst, port, dport, payload)
        packets = ip_packets(src, dst, udp)
        for packet in packets:
            raw.sendto(packet, (dst, 0))
        print(f"sent {mode}: {len(payload)} bytes in {len(packets)} IP packet(s)", flush=True)
        # Keep the datagrams apart so the receiver sees them in the order given.
        time.sleep(0.05)
    raw.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

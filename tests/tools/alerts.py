#!/usr/bin/env python3
"""Prints every DTLS alert record that arrives from a UDP port, as seen on one interface.

Usage: alerts.py IFACE PORT SECONDS. Runs inside a test's namespace (AF_PACKET on IFACE), prints
"ready" once listening, then one line "alert epoch=E level=L desc=D" per plaintext alert record
(epoch 0; encrypted ones print "alert epoch=E encrypted"), and exits after SECONDS.
"""
import socket
import struct
import sys
import time

ETH_P_ALL = 0x0003


def main():
    iface, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.ntohs(ETH_P_ALL))
    s.bind((iface, 0))
    s.settimeout(0.2)
    print("ready", flush=True)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            frame = s.recv(65535)
        except socket.timeout:
            continue
        if len(frame) < 14 + 20 + 8 or frame[12:14] != b"\x08\x00":
            continue
        ip = frame[14:]
        ihl = (ip[0] & 0x0F) * 4
        if ip[9] != 17 or len(ip) < ihl + 8:
            continue
        sport = struct.unpack("!H", ip[ihl:ihl + 2])[0]
        if sport != port:
            continue
        dg = ip[ihl + 8:]
        at = 0
        while at + 13 <= len(dg):
            ctype, epoch, length = dg[at], struct.unpack("!H", dg[at + 3:at + 5])[0], struct.unpack("!H", dg[at + 11:at + 13])[0]
            body = dg[at + 13:at + 13 + length]
            if ctype == 21:
                if epoch == 0 and len(body) == 2:
                    print(f"alert epoch=0 level={body[0]} desc={body[1]}", flush=True)
                else:
                    print(f"alert epoch={epoch} encrypted", flush=True)
            at += 13 + length


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""A UDP relay for the roaming tests (tests/roam.rs): a NAT that can rebind (a new source
port towards the server), and an on-path attacker that copies what it sees and sends it from
other ports. Run it inside a network namespace of the test's own; it only sends to --server
and back to the client that last wrote to --listen.

  roam_relay.py --listen IP:PORT --server IP:PORT

Each datagram the client sends to --listen goes to --server from the upstream socket (one at a
time: the NAT's mapping); each datagram the server sends back on it goes to the client.
Prints "relaying ... port=P" once bound (P: the upstream socket's port), and
"captured cid=HEX" whenever a client datagram shows a connection ID not seen before
(an RFC 9146 record: first byte 25, the 8-byte CID at bytes 11..19).

Commands, one a line on stdin; the K-th command (from 1) answers with lines starting "#K ":

  switch    a fresh upstream socket (a new source port) replaces the old one, which is
            closed, as a NAT that lost its mapping: "#K switched port=NEW old=OLD"
  forge N   N datagrams with the captured CID and the newest epoch the client used, sequence
            numbers above any the client used (its newest + 1000 + i), and 48 random body
            bytes, from one fresh socket: "#K forged n=N type=25 cid=HEX epoch=E seq=S
            port=P" (S: the first); "#K refused: no cid captured" before any CID was seen
  replay    the latest client record (type 23 or 25) again, from a fresh socket:
            "#K replayed type=T epoch=E seq=S len=L port=P"; "#K refused: no record yet"
  hold N    the next client record (type 23 or 25) is not passed on: "#K held type=T epoch=E
            seq=S len=L"; once N newer client records have gone to the server, it goes to
            the server from a fresh socket: "#K released type=T epoch=E seq=S len=L newer=N
            newest=E2/S2 port=P" (E2/S2: the newest record passed before it)

A datagram the server sends to one of the fresh sockets (a side port) is not passed on; it
is printed: "side port=P got len=L type=T". On SIGTERM it prints
"relayed up=N down=N side=N" (side: datagrams that came back to side ports).

Python standard library only.
"""

import argparse
import os
import selectors
import signal
import socket
import sys

CID_RECORD = 25  # tls12_cid, RFC 9146
APP_RECORDS = (23, 25)  # application_data, tls12_cid
CID_LEN = 8


def addr(text):
    host, port = text.rsplit(":", 1)
    return host, int(port)


def say(text):
    print(text, flush=True)


def header(dg):
    """(type, epoch, sequence) of a datagram's first record, or None if it is too short."""
    if len(dg) < 13:
        return None
    return dg[0], int.from_bytes(dg[3:5], "big"), int.from_bytes(dg[5:11], "big")


class Relay:
    def __init__(self, listen, server):
        self.server = server
        self.sel = selectors.DefaultSelector()
        self.front = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.front.bind(listen)
        self.front.setblocking(False)
        self.sel.register(self.front, selectors.EVENT_READ, "front")
        self.up = None
        self.new_upstream()
        self.client = None  # the address that last wrote to --listen
        self.cid = None
        self.latest = None  # the latest client record (type 23 or 25): bytes
        self.newest = (0, 0)  # newest (epoch, sequence) passed to the server
        self.hold = None  # [K, N, held datagram or None, newer records since]
        self.sides = {}  # socket -> port
        self.counts = {"up": 0, "down": 0, "side": 0}
        self.commands = 0
        self.pending = b""

    def new_upstream(self):
        old = self.up
        self.up = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.up.setblocking(False)
        self.up.connect(self.server)
        self.sel.register(self.up, selectors.EVENT_READ, "up")
        if old is not None:
            self.sel.unregister(old)
            old.close()

    def side_send(self, datagrams):
        """Sends from a fresh socket (kept open to see whether the server answers it)."""
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setblocking(False)
        s.connect(self.server)
        port = s.getsockname()[1]
        self.sides[s] = port
        self.sel.register(s, selectors.EVENT_READ, "side")
        for dg in datagrams:
            s.send(dg)
        return port

    def from_client(self, dg, src):
        self.client = src
        h = header(dg)
        if h and h[0] == CID_RECORD and len(dg) >= 11 + CID_LEN:
            cid = dg[11:11 + CID_LEN]
            if cid != self.cid:
                self.cid = cid
                say(f"captured cid={cid.hex()} type={h[0]}")
        if h and h[0] in APP_RECORDS:
            if self.hold is not None and self.hold[2] is None:
                self.hold[2] = dg
                say(f"#{self.hold[0]} held type={h[0]} epoch={h[1]} seq={h[2]} len={len(dg)}")
                return
            self.latest = dg
            self.newest = max(self.newest, (h[1], h[2]))
        self.send_up(dg)
        if h and h[0] in APP_RECORDS and self.hold is not None:
            self.hold[3] += 1
            if self.hold[3] >= self.hold[1]:
                k, n, held, _ = self.hold
                self.hold = None
                t, e, s = header(held)
                port = self.side_send([held])
                say(f"#{k} released type={t} epoch={e} seq={s} len={len(held)} newer={n} "
                    f"newest={self.newest[0]}/{self.newest[1]} port={port}")

    def send_up(self, dg):
        try:
            self.up.send(dg)
            self.counts["up"] += 1
        except OSError:
            pass  # an ICMP error from an earlier send: UDP loses datagrams

    def command(self, line):
        self.commands += 1
        k = self.commands
        words = line.split()
        if words == ["switch"]:
            old = self.up.getsockname()[1]
            self.new_upstream()
            say(f"#{k} switched port={self.up.getsockname()[1]} old={old}")
        elif len(words) == 2 and words[0] == "forge" and words[1].isdigit():
            if self.cid is None:
                say(f"#{k} refused: no cid captured")
                return
            n = int(words[1])
            epoch, first = self.newest[0], self.newest[1] + 1000
            forged = []
            for i in range(n):
                body = os.urandom(48)
                forged.append(bytes([CID_RECORD, 0xFE, 0xFD]) + epoch.to_bytes(2, "big")
                              + (first + i).to_bytes(6, "big") + self.cid
                              + len(body).to_bytes(2, "big") + body)
            port = self.side_send(forged)
            say(f"#{k} forged n={n} type={CID_RECORD} cid={self.cid.hex()} epoch={epoch} "
                f"seq={first} port={port}")
        elif words == ["replay"]:
            if self.latest is None:
                say(f"#{k} refused: no record yet")
                return
            t, e, s = header(self.latest)
            port = self.side_send([self.latest])
            say(f"#{k} replayed type={t} epoch={e} seq={s} len={len(self.latest)} port={port}")
        elif len(words) == 2 and words[0] == "hold" and words[1].isdigit():
            self.hold = [k, int(words[1]), None, 0]
        else:
            say(f"#{k} unknown command {line!r}")

    def run(self, stop):
        stdin = sys.stdin.fileno()
        os.set_blocking(stdin, False)
        self.sel.register(stdin, selectors.EVENT_READ, "stdin")
        say(f"relaying {self.front.getsockname()[0]}:{self.front.getsockname()[1]} -> "
            f"{self.server[0]}:{self.server[1]} port={self.up.getsockname()[1]}")
        while not stop:
            for key, _ in self.sel.select(0.5):
                if key.data == "stdin":
                    self.read_stdin(stdin)
                    continue
                sock = key.fileobj
                while True:
                    try:
                        dg, src = sock.recvfrom(65535)
                    except (BlockingIOError, InterruptedError):
                        break
                    except OSError:
                        break  # an ICMP error from an earlier send
                    if key.data == "front":
                        self.from_client(dg, src)
                    elif key.data == "up":
                        if self.client is not None:
                            try:
                                self.front.sendto(dg, self.client)
                                self.counts["down"] += 1
                            except OSError:
                                pass
                    else:
                        self.counts["side"] += 1
                        t = dg[0] if dg else -1
                        say(f"side port={self.sides[sock]} got len={len(dg)} type={t}")
        c = self.counts
        say(f"relayed up={c['up']} down={c['down']} side={c['side']}")

    def read_stdin(self, fd):
        try:
            data = os.read(fd, 4096)
        except BlockingIOError:
            return
        if not data:  # EOF: no more commands, the relaying goes on
            self.sel.unregister(fd)
            return
        self.pending += data
        while b"\n" in self.pending:
            line, self.pending = self.pending.split(b"\n", 1)
            if line.strip():
                self.command(line.decode(errors="replace").strip())


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--listen", type=addr, required=True)
    ap.add_argument("--server", type=addr, required=True)
    args = ap.parse_args()
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    Relay(args.listen, args.server).run(stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())

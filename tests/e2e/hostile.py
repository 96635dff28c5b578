#!/usr/bin/env python3
"""Hostile HTTP clients for the e2e suite and benches/stress.sh, bounded in count and time.

Talks only to 127.0.0.1 (run it inside the sandbox or its network namespace). Standard library of
python3-minimal only. Prints `key=value` lines.

  hostile.py bigheader PORT MEGABYTES      one header line of that size, as fast as accepted
  hostile.py nobody PORT METHOD PATH       a head announcing a 60000-byte body, never the body
  hostile.py partial PORT                  half a head, then silence: when and what comes back
  hostile.py upgrade PORT                  a bodiless GET with Connection: Upgrade
  hostile.py flood PORT IDLE TRICKLE SECONDS [PID]
      IDLE connections that send nothing and TRICKLE that send a body a byte a second, each
      reopened when the service closes it, while a probe asks GET /health every 200 ms;
      PID: sample that process's threads and peak RSS
  hostile.py hold PORT IDLE TRICKLE SECONDS
      the same connections opened once, never reopened, and no probe (no request completes)
"""

import selectors
import socket
import sys
import time

HOST = "127.0.0.1"
MAX_CONNS = 1000
MAX_SECONDS = 120


def connect(port, timeout=5.0):
    s = socket.create_connection((HOST, port), timeout=timeout)
    return s


def read_reply(s, limit):
    """Everything until the server closes or `limit` seconds pass: (bytes, seconds, closed)."""
    start = time.monotonic()
    data = b""
    closed = False
    while time.monotonic() - start < limit:
        s.settimeout(max(0.01, limit - (time.monotonic() - start)))
        try:
            chunk = s.recv(65536)
        except socket.timeout:
            break
        except OSError:
            closed = True
            break
        if not chunk:
            closed = True
            break
        data += chunk
    return data, time.monotonic() - start, closed


def status_of(data):
    parts = data.split(b" ", 2)
    return parts[1].decode() if len(parts) > 1 and data.startswith(b"HTTP/") else "none"


def body_of(data):
    return data.split(b"\r\n\r\n", 1)[1].decode(errors="replace").strip() if b"\r\n\r\n" in data else ""


def bigheader(port, megabytes):
    s = connect(port)
    s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: ")
    chunk = b"a" * 65536
    sent = 0
    deadline = time.monotonic() + 60
    try:
        while sent < megabytes * 1024 * 1024 and time.monotonic() < deadline:
            s.sendall(chunk)
            sent += len(chunk)
    except OSError:
        pass
    data, _, _ = read_reply(s, 5)
    print(f"sent={sent}")
    print(f"status={status_of(data)}")
    s.close()


def nobody(port, method, path):
    s = connect(port)
    s.sendall(f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              "Content-Length: 60000\r\n\r\n".encode())
    data, secs, closed = read_reply(s, 5)
    print(f"status={status_of(data)}")
    print(f"seconds={secs:.3f}")
    print(f"closed={closed}")
    print(f"body={body_of(data)}")


def partial(port):
    s = connect(port, timeout=30)
    s.sendall(b"POST /shutdown/schedule HTTP/1.1\r\nHost: x\r\nContent-Le")
    data, secs, closed = read_reply(s, 30)
    print(f"status={status_of(data)}")
    print(f"seconds={secs:.3f}")
    print(f"closed={closed}")
    print(f"body={body_of(data)}")


def upgrade(port):
    s = connect(port)
    s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
    data, secs, closed = read_reply(s, 30)
    print(f"status={status_of(data)}")
    print(f"seconds={secs:.3f}")
    print(f"closed={closed}")


def proc_status(pid):
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                out[k] = v.split()[0] if v.split() else ""
    except OSError:
        pass
    return out


def probe(port):
    """Seconds for a fresh GET /health, or None when it failed or took over 5 s."""
    start = time.monotonic()
    try:
        s = connect(port)
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data, _, _ = read_reply(s, 5)
        s.close()
    except OSError:
        return None
    return time.monotonic() - start if status_of(data) == "200" else None


def percentile(values, p):
    if not values:
        return float("nan")
    v = sorted(values)
    return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))]


def flood(port, idle, trickle, seconds, pid=None, reopen=True, probing=True):
    idle, trickle = min(idle, MAX_CONNS), min(trickle, MAX_CONNS - min(idle, MAX_CONNS))
    seconds = min(seconds, MAX_SECONDS)
    sel = selectors.DefaultSelector()
    conns = {}  # socket -> [kind, next send time]
    reopened = 0

    def open_one(kind):
        try:
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex((HOST, port))
        except OSError:
            return False
        conns[s] = [kind, time.monotonic() + 0.5, False]
        sel.register(s, selectors.EVENT_READ)
        return True

    for _ in range(idle):
        open_one("idle")
    for _ in range(trickle):
        open_one("trickle")
    end = time.monotonic() + seconds
    next_probe = time.monotonic() + 1
    lat, failed, threads, hwm, rss = [], 0, 0, 0, 0
    while time.monotonic() < end:
        for key, _ in sel.select(timeout=0.05):
            s = key.fileobj
            try:
                chunk = s.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                chunk = b""
            if not chunk:
                kind = conns.pop(s)[0]
                sel.unregister(s)
                s.close()
                if reopen:
                    reopened += 1
                    open_one(kind)
        now = time.monotonic()
        for s, st in list(conns.items()):
            if st[0] == "trickle" and now >= st[1]:
                if not st[2]:
                    msg = b"GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: 60000\r\n\r\n"
                    st[2] = True
                else:
                    msg = b"x"
                try:
                    s.send(msg)
                except OSError:
                    pass
                st[1] = now + 1.0
        if probing and now >= next_probe:
            t = probe(port)
            if t is None:
                failed += 1
            else:
                lat.append(t)
            if pid:
                st = proc_status(pid)
                threads = max(threads, int(st.get("Threads", 0) or 0))
                hwm = max(hwm, int(st.get("VmHWM", 0) or 0))
                rss = max(rss, int(st.get("VmRSS", 0) or 0))
            next_probe = time.monotonic() + 0.2
    open_now = len(conns)
    for s in conns:
        s.close()
    print(f"connections={open_now}")
    print(f"reopened={reopened}")
    print(f"probes={len(lat) + failed}")
    print(f"failed={failed}")
    print(f"p50_ms={percentile(lat, 50) * 1000:.1f}")
    print(f"p99_ms={percentile(lat, 99) * 1000:.1f}")
    print(f"max_ms={(max(lat) if lat else float('nan')) * 1000:.1f}")
    if pid:
        print(f"max_threads={threads}")
        print(f"max_rss_kb={rss}")
        print(f"hwm_kb={hwm}")


def main(argv):
    mode, port = argv[1], int(argv[2])
    if mode == "bigheader":
        bigheader(port, int(argv[3]))
    elif mode == "nobody":
        nobody(port, argv[3], argv[4])
    elif mode == "partial":
        partial(port)
    elif mode == "upgrade":
        upgrade(port)
    elif mode == "hold":
        flood(port, int(argv[3]), int(argv[4]), float(argv[5]), reopen=False, probing=False)
    elif mode == "flood":
        flood(port, int(argv[3]), int(argv[4]), float(argv[5]), argv[6] if len(argv) > 6 else None)
    else:
        sys.exit(f"unknown mode {mode}")


if __name__ == "__main__":
    main(sys.argv)

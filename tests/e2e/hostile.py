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
  hostile.py attack PORT SECONDS PID MEMORY IDLE SLOW TRICKLE
      MEMORY connections that each send a head of about 65 KB (bytes 0xFF on every other one,
      'a' on the rest) announcing a 65536-byte body and all of it but the last byte; IDLE that
      send nothing; SLOW with a 1-byte receive buffer that pipeline requests and never read;
      TRICKLE that send a 64 KiB head a byte at a time. Each is reopened when the service closes
      it. Meanwhile a separate process asks GET /health on a fresh connection every 100 ms and
      samples the service's peak memory (memory.peak of its cgroup, else VmHWM), threads and CPU.
  hostile.py inflight PORT COUNT UNIT
      COUNT connections each send half a GET /health head; once UNIT is deactivating (its idle
      exit began) they send the rest: how many got their answer
"""

import selectors
import socket
import sys
import time

import os
import subprocess

HOST = "127.0.0.1"
MAX_CONNS = 1500
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


def raise_fd_limit():
    """As `ulimit -n 4096` (which the e2e runs it under: python3-minimal has no `resource`)."""
    try:
        import resource
    except ImportError:
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, 4096) if hard != resource.RLIM_INFINITY else 4096
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def peak_memory_kb(pid):
    """(KiB, source): the cgroup's memory.peak when there is one (cgroup v2), else VmHWM."""
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            for line in f:
                if line.startswith("0::"):
                    path = f"/sys/fs/cgroup{line[3:].strip()}/memory.peak"
                    if os.path.exists(path):
                        with open(path) as p:
                            return int(p.read()) // 1024, "memory.peak"
    except (OSError, ValueError):
        pass
    return int(proc_status(pid).get("VmHWM", 0) or 0), "VmHWM"


def cpu_seconds(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return float("nan")


def prober(port, seconds, pid, out):
    """Fresh-connection /health probes every 100 ms and samples of the service, for `seconds`."""
    lat, failed, threads, peak, source, why = [], 0, 0, 0, "VmHWM", []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        start = time.monotonic()
        t = None
        try:
            s = connect(port)
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data, _, _ = read_reply(s, 5)
            s.close()
            if status_of(data) == "200":
                t = time.monotonic() - start
            else:
                why.append(f"status {status_of(data)} after {time.monotonic() - start:.3f}s")
        except OSError as e:
            why.append(f"{e} after {time.monotonic() - start:.3f}s")
        if t is None:
            failed += 1
        else:
            lat.append(t)
        st = proc_status(pid)
        threads = max(threads, int(st.get("Threads", 0) or 0))
        kb, source = peak_memory_kb(pid)
        peak = max(peak, kb)
        time.sleep(max(0.0, 0.1 - (t or 0)))
    out.write(f"probes={len(lat) + failed}\nfailed={failed}\n")
    out.write(f"p50_ms={percentile(lat, 50) * 1000:.1f}\np99_ms={percentile(lat, 99) * 1000:.1f}\n")
    out.write(f"max_ms={(max(lat) if lat else float('nan')) * 1000:.1f}\n")
    out.write(f"max_threads={threads}\npeak_kb={peak}\npeak_source={source}\n")
    out.write(f"failures={'; '.join(why[:5])}\n")


def attack(port, seconds, pid, memory, idle, slow, trickle):
    raise_fd_limit()
    seconds = min(seconds, MAX_SECONDS)
    total = memory + idle + slow + trickle
    if total > MAX_CONNS:
        sys.exit(f"{total} connections asked, at most {MAX_CONNS}")
    cpu_before = cpu_seconds(pid)
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(read_end)
        with os.fdopen(write_end, "w") as out:
            prober(port, seconds, pid, out)
        os._exit(0)
    os.close(write_end)

    body = b"x" * 65535
    heads = [
        b"GET /health HTTP/1.1\r\nHost: x\r\nX-Fill: " + fill * 65000
        + b"\r\nContent-Length: 65536\r\n\r\n" + body
        for fill in (b"\xff", b"a")
    ]
    pipelined = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 100
    trickled = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Trickle: " + b"a" * 65500 + b"\r\n\r\n"
    sel = selectors.DefaultSelector()
    conns = {}  # socket -> dict(kind, out, pos)
    stats = {"opened": 0, "reopened": 0, "statuses": {}}
    serial = [0]

    def open_one(kind):
        s = socket.socket()
        if kind == "slow":
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.setblocking(False)
        s.connect_ex((HOST, port))
        serial[0] += 1
        out = {"memory": heads[serial[0] % 2], "slow": pipelined, "trickle": trickled}.get(kind, b"")
        conns[s] = {"kind": kind, "out": out, "pos": 0, "seen": b"", "next": 0.0}
        events = selectors.EVENT_WRITE if kind in ("memory", "slow") else selectors.EVENT_READ
        sel.register(s, events)
        stats["opened"] += 1

    def close(s):
        st = conns.pop(s)
        sel.unregister(s)
        s.close()
        stats["reopened"] += 1
        open_one(st["kind"])

    def note_status(st, chunk):
        st["seen"] += chunk[: 64 - len(st["seen"])]
        if st["seen"].startswith(b"HTTP/") and not st.get("counted"):
            code = st["seen"].split(b" ", 2)[1].decode(errors="replace")
            stats["statuses"][code] = stats["statuses"].get(code, 0) + 1
            st["counted"] = True

    for kind, n in (("memory", memory), ("idle", idle), ("slow", slow), ("trickle", trickle)):
        for _ in range(n):
            open_one(kind)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for key, events in sel.select(timeout=0.001 if trickle else 0.05):
            s = key.fileobj
            st = conns.get(s)
            if st is None:
                continue
            if events & selectors.EVENT_READ:
                try:
                    chunk = s.recv(65536)
                except BlockingIOError:
                    continue
                except OSError:
                    chunk = b""
                if not chunk:
                    close(s)
                    continue
                note_status(st, chunk)
            if events & selectors.EVENT_WRITE and st["kind"] in ("memory", "slow"):
                try:
                    st["pos"] += s.send(st["out"][st["pos"]:st["pos"] + 65536])
                except BlockingIOError:
                    pass
                except OSError:
                    close(s)
                    continue
                if st["pos"] >= len(st["out"]):
                    if st["kind"] == "memory":
                        sel.modify(s, selectors.EVENT_READ)
                    else:
                        # Never read: only a failing send shows it was closed.
                        sel.unregister(s)
                        st["next"] = time.monotonic() + 1
        now = time.monotonic()
        for s, st in list(conns.items()):
            if st["kind"] == "trickle" and st["pos"] < len(st["out"]):
                try:
                    st["pos"] += s.send(st["out"][st["pos"]:st["pos"] + 1])
                except BlockingIOError:
                    pass
                except OSError:
                    close(s)
            elif st["kind"] == "slow" and st["next"] and now >= st["next"]:
                st["next"] = now + 1
                try:
                    s.send(b"GET /health HTTP/1.1\r\n\r\n")
                except BlockingIOError:
                    pass
                except OSError:
                    sel.register(s, selectors.EVENT_READ)
                    close(s)
    open_now = len(conns)
    for s in list(conns):
        s.close()
    os.waitpid(child, 0)
    with os.fdopen(read_end) as f:
        sys.stdout.write(f.read())
    print(f"connections={open_now}")
    print(f"opened={stats['opened']}")
    print(f"statuses={','.join(f'{k}:{v}' for k, v in sorted(stats['statuses'].items()))}")
    print(f"cpu_s={cpu_seconds(pid) - cpu_before:.2f}")


def systemctl_state(unit):
    return subprocess.run(["systemctl", "show", "-P", "ActiveState", unit],
                          capture_output=True, text=True).stdout.strip()


def inflight(port, count, unit):
    socks = []
    for _ in range(count):
        s = connect(port)
        s.sendall(b"GET /health HTTP/1.1\r\nHo")
        socks.append(s)
    deadline = time.monotonic() + 20
    state = systemctl_state(unit)
    while state != "deactivating" and time.monotonic() < deadline:
        time.sleep(0.02)
        state = systemctl_state(unit)
    print(f"state={state}")
    ok = 0
    for s in socks:
        s.sendall(b"st: x\r\nConnection: close\r\n\r\n")
    for s in socks:
        data, _, _ = read_reply(s, 10)
        ok += status_of(data) == "200"
        s.close()
    print(f"answered={ok}")


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
    elif mode == "attack":
        attack(port, float(argv[3]), argv[4], *(int(a) for a in argv[5:9]))
    elif mode == "inflight":
        inflight(port, int(argv[3]), argv[4])
    else:
        sys.exit(f"unknown mode {mode}")


if __name__ == "__main__":
    main(sys.argv)

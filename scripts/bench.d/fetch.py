#!/usr/bin/env python3
"""Bounded NAR download load: CONNS keep-alive connections each GET the same URL over and over
for SECONDS, reading with 1 MiB recv_into (wrk reads 8 KiB at a time, which makes the client
the bottleneck above ~1 GB/s on loopback). Prints one line:

    RESULT <bytes received> <seconds> <complete responses> <errors> <connections answered>

Bytes of responses cut off at the deadline count (it is a rate); a non-200 status, a short body
or a connection error counts as an error and ends that connection. A connection still waiting
for its first response when the time is up is not an error, but it is not "answered" either.

    fetch.py URL ttfb    # median of 5 times from sending the request to the first response byte
"""
import socket
import sys
import threading
import time
from urllib.parse import urlsplit

url = sys.argv[1]
parts = urlsplit(url)
host, port = parts.hostname, parts.port or 80
path = parts.path + (f"?{parts.query}" if parts.query else "")
request = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: */*\r\n\r\n".encode()

if sys.argv[2] == "ttfb":
    times = []
    for _ in range(5):
        with socket.create_connection((host, port), timeout=60) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            t0 = time.monotonic()
            sock.sendall(request)
            first = sock.recv(64)
            times.append(time.monotonic() - t0)
            if b" 200 " not in first:
                sys.exit(f"fetch.py: {first!r}")
    times.sort()
    print(f"RESULT {times[2] * 1000:.3f}")
    sys.exit(0)

conns, seconds = int(sys.argv[2]), float(sys.argv[3])

lock = threading.Lock()
totals = {"bytes": 0, "complete": 0, "errors": 0, "answered": 0}
start = time.monotonic()
deadline = start + seconds


class TimeUp(Exception):
    pass


def recv_into(sock, view, n):
    """recv_into that gives up at the deadline (bounded run) and not before."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeUp()
    sock.settimeout(left)
    try:
        got = sock.recv_into(view, n)
    except socket.timeout:
        raise TimeUp() from None
    if got == 0:
        raise ConnectionError("connection closed early")
    return got


def worker():
    got_total = complete = errors = answered = 0
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    sock = None
    try:
        sock = socket.create_connection((host, port), timeout=max(1.0, seconds))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while True:
            sock.sendall(request)
            head = b""
            while b"\r\n\r\n" not in head:
                n = recv_into(sock, view, 65536)
                head += bytes(view[:n])
            answered = 1
            head, rest = head.split(b"\r\n\r\n", 1)
            lines = head.split(b"\r\n")
            if b" 200 " not in lines[0] + b" ":
                raise ConnectionError(f"status {lines[0]!r}")
            length = None
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if length is None:
                raise ConnectionError("no Content-Length")
            got = len(rest)
            got_total += got
            while got < length:
                n = recv_into(sock, view, min(len(buf), length - got))
                got += n
                got_total += n
            complete += 1
    except TimeUp:
        pass
    except (OSError, ConnectionError) as e:
        errors += 1
        print(f"fetch.py: {e}", file=sys.stderr)
    finally:
        if sock is not None:
            sock.close()
    with lock:
        totals["bytes"] += got_total
        totals["complete"] += complete
        totals["errors"] += errors
        totals["answered"] += answered


threads = [threading.Thread(target=worker, daemon=True) for _ in range(conns)]
for t in threads:
    t.start()
for t in threads:
    t.join(timeout=seconds + 30)
elapsed = min(time.monotonic(), deadline) - start
print(
    f"RESULT {totals['bytes']} {elapsed:.3f} {totals['complete']} {totals['errors']} "
    f"{totals['answered']}"
)

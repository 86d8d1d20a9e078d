#!/usr/bin/env python3
"""Requests every path of a file (one request path a line) once through a server, over
THREADS keep-alive connections, and fails on any answer but 200. Used by scripts/bench-narinfo
to fill nginx's proxy_cache with every narinfo of a generated cache before it is measured.

    warm-narinfos.py http://127.0.0.1:PORT paths.txt [THREADS]
"""
import http.client
import sys
import threading
from urllib.parse import urlsplit

base, paths_file = sys.argv[1], sys.argv[2]
threads = int(sys.argv[3]) if len(sys.argv) > 3 else 4
parts = urlsplit(base)
paths = [p for p in open(paths_file).read().split() if p]
failures = []


def worker(stripe):
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    for path in stripe:
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read()
        if resp.status != 200:
            failures.append(f"GET {base}{path}: {resp.status}")
            return


workers = [
    threading.Thread(target=worker, args=(paths[i::threads],)) for i in range(threads)
]
for w in workers:
    w.start()
for w in workers:
    w.join()
if failures:
    sys.exit("warm-narinfos.py: " + "; ".join(failures))
print(f"RESULT warmed {len(paths)}")

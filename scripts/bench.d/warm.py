#!/usr/bin/env python3
"""Fetches every narinfo named in a file of store path hashes through a cache, then each NAR it
points to, over one keep-alive connection; fails on any non-200. Prints "<hash> <NAR URL>
<bytes>" per path. Used to warm a proxy and to learn the NAR URLs it hands out.

    warm.py http://127.0.0.1:PORT hashes.txt
"""
import http.client
import sys
from urllib.parse import urlsplit

base, hashes_file = sys.argv[1], sys.argv[2]
parts = urlsplit(base)
conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=600)


def get(path):
    conn.request("GET", path)
    resp = conn.getresponse()
    size = 0
    body = b""
    if path.endswith(".narinfo"):
        body = resp.read()
        size = len(body)
    else:
        while True:
            piece = resp.read(1 << 20)
            if not piece:
                break
            size += len(piece)
    if resp.status != 200:
        sys.exit(f"warm.py: GET {base}{path}: {resp.status}")
    return body, size


for h in open(hashes_file).read().split():
    text, _ = get(f"/{h}.narinfo")
    url = next(
        (line[5:] for line in text.decode().splitlines() if line.startswith("URL: ")), None
    )
    if url is None:
        sys.exit(f"warm.py: {h}.narinfo has no URL")
    _, size = get(f"/{url}")
    print(h, url, size, flush=True)

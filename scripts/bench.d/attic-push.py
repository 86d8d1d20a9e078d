#!/usr/bin/env python3
"""Uploads store paths to an atticd the way `attic push` does, for scripts/bench-attic.

The attic client links libnixstore of a newer Nix than this machine has, so this speaks its
upload API directly: one `PUT /_api/v1/upload-path` per path, the narinfo fields as JSON in
the `X-Attic-Nar-Info` header and the plain NAR as the body. The NARs are dumped and hashed
before the clock starts, so the time measured is atticd's ingest (chunking, compression,
storage, database), one path at a time, as ncps ingests them through cold fetches.

    attic-push.py BASE_URL CACHE TOKEN SCRATCH_DIR STORE_PATH...

Prints one line: `<seconds> <plain NAR bytes>`.
"""

import hashlib
import http.client
import json
import os
import subprocess
import sys
import time
import urllib.parse


def nix_store(*args):
    return subprocess.run(["nix-store", *args], check=True, capture_output=True, text=True).stdout


def prepare(path, scratch):
    """Dumps the NAR of `path` into `scratch` and returns (file, narinfo JSON)."""
    name = os.path.basename(path)
    nar = os.path.join(scratch, name + ".nar")
    with open(nar, "wb") as out:
        subprocess.run(["nix-store", "--dump", path], check=True, stdout=out)
    digest = hashlib.sha256()
    with open(nar, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    deriver = nix_store("-q", "--deriver", path).strip()
    info = {
        "cache": None,
        "store_path_hash": name[:32],
        "store_path": path,
        "references": nix_store("-q", "--references", path).split(),
        "system": None,
        "deriver": None if deriver == "unknown-deriver" else deriver,
        "sigs": [],
        "ca": None,
        "nar_hash": "sha256:" + digest.hexdigest(),
        "nar_size": os.path.getsize(nar),
    }
    return nar, info


def main():
    base, cache, token, scratch, *paths = sys.argv[1:]
    url = urllib.parse.urlsplit(base)
    prepared = [prepare(p, scratch) for p in paths]
    total = 0
    conn = http.client.HTTPConnection(url.hostname, url.port)
    started = time.monotonic()
    for nar, info in prepared:
        info["cache"] = cache
        with open(nar, "rb") as body:
            conn.request(
                "PUT",
                "/_api/v1/upload-path",
                body=body,
                headers={
                    "Authorization": "Bearer " + token,
                    "X-Attic-Nar-Info": json.dumps(info),
                    "Content-Type": "application/octet-stream",
                    "Content-Length": str(info["nar_size"]),
                },
            )
            response = conn.getresponse()
            answer = response.read()
        if response.status != 200:
            sys.exit(f"upload of {info['store_path']} failed: {response.status} {answer!r}")
        total += info["nar_size"]
    print(f"{time.monotonic() - started:.3f} {total}")


if __name__ == "__main__":
    main()

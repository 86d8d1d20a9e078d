#!/usr/bin/env python3
"""Cold-fetches store paths through ncps one at a time and waits until each NAR is stored
as chunks only, for scripts/bench-attic: the ingest side of the comparison with attic.

For every path: GET its narinfo, then GET the NAR it names (read to the end and dropped).
Two clocks: until the client has every NAR (served), and until ncps's SQLite database
records every NAR as chunked with no whole file left (stored). Eager chunking streams a cold
NAR to the client while it chunks it and commits the chunk list after, so the two are close;
lazy chunking serves the whole file first and chunks in the background, so the second clock
also covers the background work (and the deletion of whole files, which needs a short
--cache-cdc-delete-delay and recovery schedule to happen within the run).

    ncps-ingest.py BASE_URL DB_FILE STORE_PATH...

Prints one line: `<seconds served> <seconds stored> <plain NAR bytes>`.
"""

import http.client
import os
import sqlite3
import sys
import time
import urllib.parse


def get(conn, path):
    conn.request("GET", path)
    response = conn.getresponse()
    body = response.read()
    if response.status != 200:
        sys.exit(f"GET {path}: {response.status} {body[:200]!r}")
    return body


def stored_as_chunks(db_file):
    """NARs recorded as chunked with no whole file left."""
    try:
        db = sqlite3.connect(f"file:{db_file}?mode=ro", uri=True, timeout=5)
        try:
            return db.execute(
                "SELECT COUNT(*) FROM nars WHERE chunk_count IS NOT NULL AND whole_key IS NULL"
            ).fetchone()[0]
        finally:
            db.close()
    except sqlite3.OperationalError:
        return 0


def main():
    base, db_file, *paths = sys.argv[1:]
    url = urllib.parse.urlsplit(base)
    conn = http.client.HTTPConnection(url.hostname, url.port)
    total = 0
    nar_hashes = set()
    started = time.monotonic()
    for path in paths:
        info = get(conn, f"/{os.path.basename(path)[:32]}.narinfo").decode()
        fields = dict(line.split(": ", 1) for line in info.splitlines() if ": " in line)
        get(conn, "/" + fields["URL"])
        total += int(fields["NarSize"])
        nar_hashes.add(fields["NarHash"])
    served = time.monotonic() - started
    while stored_as_chunks(db_file) < len(nar_hashes):
        if time.monotonic() - started > 600:
            sys.exit("the NARs were not all stored as chunks within 10 minutes")
        time.sleep(0.02)
    print(f"{served:.3f} {time.monotonic() - started:.3f} {total}")


if __name__ == "__main__":
    main()

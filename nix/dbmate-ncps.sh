#!/usr/bin/env bash
# `dbmate-ncps up`: nixpkgs' services.ncps module runs this before `ncps serve`, with the
# database in DATABASE_URL (the Go ncps package shipped its migration tool under this name).
# Here it is `ncps migrate up`, which also takes over a Go ncps's database. Installed by
# nix/package.nix, which puts the binary's path in place of @ncps@ (NCPS overrides it).
set -euo pipefail

ncps="${NCPS:-@ncps@}"
case "${1:-}" in
up | migrate)
    if [ -n "${DATABASE_URL:-}" ]; then
        exec "$ncps" migrate up --cache-database-url "$DATABASE_URL"
    fi
    exec "$ncps" migrate up
    ;;
*)
    echo "dbmate-ncps: only \`up\` is supported: ncps's migrations go forward only (see \`ncps migrate --help\`)" >&2
    exit 2
    ;;
esac

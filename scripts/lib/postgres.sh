# A throwaway PostgreSQL for the benchmarks (scripts/bench-db, scripts/bench-replicas), the
# recipe of scripts/test: a temporary data directory, a free port on 127.0.0.1, fsync off.
# Needs log, die and free_port from the sourcing script. start_bench_postgres DIR sets pg_bin,
# pg_data, PG_PORT and PG_VERSION; stop_bench_postgres stops it (safe to call when it never
# started); pg_url NAME creates an empty database and prints its URL.

pg_bin=""
pg_data=""

as_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

start_bench_postgres() { # dir
  local dir=$1
  pg_bin=$(find /usr/lib/postgresql -maxdepth 2 -name bin -type d | sort -V | tail -n 1)
  [ -n "$pg_bin" ] && [ -x "$pg_bin/initdb" ] || die "PostgreSQL is not installed"
  mkdir -p "$dir"
  if [ "$(id -u)" -eq 0 ]; then chown postgres "$dir"; fi
  PG_PORT=$(free_port)
  as_pg "$pg_bin/initdb" -D "$dir/data" -A trust -U postgres >"$dir/initdb.log" 2>&1 ||
    { tail -20 "$dir/initdb.log" >&2; die "initdb failed"; }
  pg_data=$dir/data
  as_pg "$pg_bin/pg_ctl" -D "$pg_data" -l "$dir/server.log" -w -t 60 \
    -o "-p $PG_PORT -k $dir -c listen_addresses=127.0.0.1 -c max_connections=300 -c fsync=off -c synchronous_commit=off -c full_page_writes=off" \
    start >/dev/null || { tail -20 "$dir/server.log" >&2; die "PostgreSQL did not start"; }
  PG_VERSION=$("$pg_bin/postgres" --version | awk '{print $3}')
  log "PostgreSQL $PG_VERSION on 127.0.0.1:$PG_PORT"
}

stop_bench_postgres() {
  if [ -n "$pg_data" ] && [ -f "$pg_data/postmaster.pid" ]; then
    as_pg "$pg_bin/pg_ctl" -D "$pg_data" -m immediate -w stop >/dev/null 2>&1 || true
  fi
}

pg_url() { # name -> URL of a new, empty database
  as_pg "$pg_bin/psql" -h 127.0.0.1 -p "$PG_PORT" -U postgres -q -c "CREATE DATABASE $1" postgres >&2
  echo "postgres://postgres@127.0.0.1:$PG_PORT/$1"
}

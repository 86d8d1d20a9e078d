# Helpers shared by the benchmarks that start servers (scripts/bench, scripts/bench-narinfo,
# scripts/bench-harmonia, scripts/bench-attic, scripts/bench-dedup…).
# Needs die from the sourcing script.

free_port() { # a TCP port free on 127.0.0.1 now
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

wait_http() { # url: until anything answers (any status)
  for _ in $(seq 200); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$1" || true)" != 000 ] && return 0
    sleep 0.1
  done
  die "nothing answers at $1"
}

# Peak RSS: VmHWM, reset by writing 5 to clear_refs (the process's own, as its owner or root).
reset_peak() { local p; for p in "$@"; do echo 5 >"/proc/$p/clear_refs" 2>/dev/null || true; done; }
peak_mib() { # pids... -> sum of their VmHWM in MiB
  local p sum=0 kb
  for p in "$@"; do
    kb=$(awk '/^VmHWM/{print $2}' "/proc/$p/status" 2>/dev/null || echo 0)
    sum=$((sum + ${kb:-0}))
  done
  awk -v k="$sum" 'BEGIN {printf "%.1f", k / 1024}'
}

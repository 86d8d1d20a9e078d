# Real NARs for the chunk-store benchmarks (scripts/bench-dedup, scripts/bench-attic): two
# consecutive releases of Python packages (wheels from PyPI, unpacked and added to the store
# with `nix-store --add`) and one large directory of real files, signed with a throwaway
# upstream key and copied into a zstd `file://` binary cache that `python3 -m http.server`
# serves on 127.0.0.1. Also the helpers that run ncps against that upstream.
#
# Needs from the sourcing script: WORK (a scratch directory), PAIRS ("pkg:v1:v2 …"), BIG_DIR,
# NCPS (the binary), PIDS (an array the script kills on exit), NIX_CONFIG exported, and
# free_port (scripts/lib/bench.sh).
# build_release_nars sets PAIR_PATHS (pkg → its two store paths), BIG, ALL (every path: BIG
# first, then each pair's) and UP_PORT.

now() { date +%s.%N; }

declare -A PAIR_PATHS
BIG=""
ALL=()
UP_PORT=""

build_release_nars() {
  nix-store --generate-binary-cache-key bench-up-1 "$WORK/up.sec" "$WORK/up.pub" >&2
  local pair pkg v1 v2 v d p
  for pair in $PAIRS; do
    IFS=: read -r pkg v1 v2 <<<"$pair"
    local paths=()
    for v in "$v1" "$v2"; do
      d="$WORK/src/$pkg-$v"
      mkdir -p "$d"
      pip download --no-deps -q "$pkg==$v" -d "$d/whl" >&2
      python3 -m zipfile -e "$d"/whl/*.whl "$d/tree"
      paths+=("$(nix-store --add "$d/tree")")
    done
    PAIR_PATHS[$pkg]="${paths[*]}"
  done
  BIG=$(nix-store --add "$BIG_DIR")
  ALL=("$BIG")
  for pair in $PAIRS; do
    IFS=: read -r pkg v1 v2 <<<"$pair"
    for p in ${PAIR_PATHS[$pkg]}; do ALL+=("$p"); done
  done
  for p in "${ALL[@]}"; do nix store sign --key-file "$WORK/up.sec" "$p"; done
  nix copy --to "file://$WORK/up?compression=zstd" "${ALL[@]}" >&2
  UP_PORT=$(free_port)
  (cd "$WORK/up" && exec python3 -m http.server "$UP_PORT" --bind 127.0.0.1 >/dev/null 2>&1) &
  PIDS+=($!)
}

# Starts ncps on the fixture upstream with its data in $WORK/NAME; sets NCPS_URL and adds its
# pid to PIDS (so not in a subshell: call it as a command, then read NCPS_URL).
NCPS_URL=""
start_ncps() { # name extra-args...
  local name=$1; shift
  local port; port=$(free_port)
  "$NCPS" serve --cache-hostname bench --cache-storage-local "$WORK/$name" \
    --cache-upstream-url "http://127.0.0.1:$UP_PORT" --cache-upstream-public-key "$(cat "$WORK/up.pub")" \
    --server-addr "127.0.0.1:$port" --log-level warn "$@" >"$WORK/$name.log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done
  NCPS_URL="http://127.0.0.1:$port"
}
hash_of() { basename "$1" | cut -c1-32; }
nar_url() { curl -sf "$1/$(hash_of "$2").narinfo" | sed -n 's/^URL: //p'; }
nar_size() { curl -sf "$1/$(hash_of "$2").narinfo" | sed -n 's/^NarSize: //p'; }
fetch_cold() { # base path -> seconds for the NAR (its narinfo fetched first, not timed)
  local url; url=$(nar_url "$1" "$2")
  local t0; t0=$(now)
  curl -sf "$1/$url" -o /dev/null
  python3 -c "print($(now) - $t0)"
}

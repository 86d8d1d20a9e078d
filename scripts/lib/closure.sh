# The closure the ncps-vs-nginx benchmarks serve (scripts/bench, scripts/bench-cold): store
# paths built with the real nix from scripts/bench.d/fixture.nix, signed with a throwaway key
# and written as a file:// binary cache under $WORK/up, and cold `nix copy`s of it.
# Needs from the sourcing script: WORK, HERE (scripts/bench.d), log, die, rm_tree, FIXTURES (an
# array the caller deletes from the local store on exit), NIX_CONFIG exported, and the knobs
# SMALL_PATHS SMALL_MIN_KB SMALL_MAX_KB MEDIUM_PATHS MEDIUM_MIN_KB MEDIUM_MAX_KB LARGE_MB
# UPSTREAM_COMPRESSION.

build_closure() { # -> TOP, LARGE, CLOSURE (array), CLOSURE_COUNT, UP_KEY; the cache in $WORK/up
  log "building fixtures: $SMALL_PATHS small + $MEDIUM_PATHS medium paths, one ${LARGE_MB} MB NAR"
  nixb() {
    nix-build "$HERE/fixture.nix" -A "$1" --no-out-link --option max-jobs 4 \
      --argstr marker "$(date +%s%N)-$$" --arg small "$SMALL_PATHS" \
      --arg smallMinKb "$SMALL_MIN_KB" --arg smallMaxKb "$SMALL_MAX_KB" \
      --arg medium "$MEDIUM_PATHS" --arg mediumMinKb "$MEDIUM_MIN_KB" \
      --arg mediumMaxKb "$MEDIUM_MAX_KB" --arg largeMb "$LARGE_MB" 2>>"$WORK/nix-build.log" ||
      { tail -20 "$WORK/nix-build.log" >&2; die "nix-build -A $1 failed"; }
  }
  TOP=$(nixb top)
  LARGE=$(nixb large)
  mapfile -t CLOSURE < <(nix-store -qR "$TOP")
  FIXTURES=("${CLOSURE[@]}" "$LARGE")
  CLOSURE_COUNT=${#CLOSURE[@]}
  nix-store --generate-binary-cache-key bench-up-1 "$WORK/up.sec" "$WORK/up.pub"
  UP_KEY=$(cat "$WORK/up.pub")
  nix store sign --key-file "$WORK/up.sec" -r "$TOP" "$LARGE"
  log "writing the upstream cache (compression=$UPSTREAM_COMPRESSION)"
  nix copy --to "file://$WORK/up?compression=$UPSTREAM_COMPRESSION" "$TOP" "$LARGE" 2>>"$WORK/nix-copy.log"
}

cold_copy() { # url trusted-key -> seconds: the whole closure into a fresh client store
  local store xdg t0 t1 n
  store=$(mktemp -d "$WORK/client.XXXX")
  xdg=$(mktemp -d "$WORK/xdg.XXXX")
  t0=$(date +%s.%N)
  XDG_CACHE_HOME=$xdg timeout 600 nix copy --from "$1" --to "$store" \
    --option trusted-public-keys "$2" "$TOP" 2>>"$WORK/nix-copy.log" || die "nix copy from $1 failed"
  t1=$(date +%s.%N)
  n=$(nix path-info --store "$store" -r "$TOP" | wc -l)
  [ "$n" = "$CLOSURE_COUNT" ] || die "nix copy from $1 brought $n of $CLOSURE_COUNT paths"
  rm_tree "$store"
  rm_tree "$xdg"
  awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.3f\n", b - a}'
}

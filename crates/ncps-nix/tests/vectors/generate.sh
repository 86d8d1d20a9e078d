#!/bin/sh
# Regenerates the test vectors in this folder with the real nix (2.8 when recorded).
# Run as root from this folder: sh generate.sh
# Reuses test-vector-1.sec if present, so the recorded Sig lines stay valid.
set -eu
export NIX_CONFIG='experimental-features = nix-command
sandbox = false
build-users-group =
substituters ='
here=$(pwd)
work=$(mktemp -d)

[ -f test-vector-1.sec ] || nix-store --generate-binary-cache-key test-vector-1 test-vector-1.sec test-vector-1.pub

A=$(nix-build vectors.nix -A a --no-out-link)
B=$(nix-build vectors.nix -A b --no-out-link)   # refers to A
C=$(nix-build vectors.nix -A c --no-out-link)   # refers to itself and to A
printf 'hello-ca\n' > "$work/ca.txt"
CA=$(nix store add-file "$work/ca.txt")         # content-addressed, gets a CA: line

nix store sign --key-file test-vector-1.sec -r "$B" "$C" "$CA"
nix copy --to "file://$work/xz" "$B" "$C" "$CA"
nix copy --to "file://$work/zstd?compression=zstd" "$B" "$C" "$CA"

mkdir -p xz zstd
cp "$work"/xz/*.narinfo xz/
cp "$work"/zstd/*.narinfo zstd/
cp "$work/xz/nix-cache-info" nix-cache-info
nix-store --dump "$A" > a.nar
nix-store --dump "$B" > b.nar
zst=$(sed -n 's|^URL: nar/||p' "zstd/$(basename "$B" | cut -c1-32).narinfo")
cp "$work/zstd/nar/$zst" .

# hashes.txt: "<what> <hex> <nix32 from nix> <SRI from nix>"
{
  for f in empty a.nar b.nar ca.txt; do
    case $f in
      empty) : > "$work/empty"; p="$work/empty" ;;
      ca.txt) p="$work/ca.txt" ;;
      *) p="$here/$f" ;;
    esac
    hex=$(sha256sum "$p" | cut -d' ' -f1)
    echo "$f $hex $(nix hash to-base32 --type sha256 "$hex") $(nix hash to-sri --type sha256 "$hex")"
  done
} > hashes.txt
nix path-info --json "$B" "$C" "$CA" | sed 's/"registrationTime":[0-9]*,//g' > path-info.json
rm -rf "$work"

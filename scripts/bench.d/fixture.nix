# Fixtures for scripts/bench: a closure of `small` paths of smallMinKb..smallMaxKb of random
# data and `medium` paths of mediumMinKb..mediumMaxKb of text (base64 of random data, which
# compresses to ~75% like much real content), all referenced from one top path; and one large
# NAR of largeMb MB of random data, outside the closure. `marker` makes fresh paths per run.
# Built with builtins.derivation and /bin/sh (no nixpkgs): nix-build -A top / -A large.
{ marker, small ? 200, smallMinKb ? 1, smallMaxKb ? 50, medium ? 20, mediumMinKb ? 500
, mediumMaxKb ? 5000, largeMb ? 1000 }:
let
  mk = name: script: builtins.derivation {
    inherit name marker;
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" script ];
    PATH = "/usr/bin:/bin";
  };
  mod = a: b: a - (a / b) * b;
  # A spread of sizes in [lo, hi] kB, the same for the same index in every run.
  kb = i: lo: hi: lo + mod (i * 7919 + 13) (hi - lo + 1);
  smalls = builtins.genList (i: mk "bench-small-${toString i}"
    "mkdir -p $out; head -c ${toString (kb i smallMinKb smallMaxKb * 1000)} /dev/urandom > $out/data")
    small;
  mediums = builtins.genList (i: mk "bench-medium-${toString i}"
    "mkdir -p $out; head -c ${toString (kb i mediumMinKb mediumMaxKb * 750)} /dev/urandom | base64 -w 76 > $out/data.txt")
    medium;
in {
  top = mk "bench-top"
    "mkdir -p $out; echo ${builtins.concatStringsSep " " (map toString (smalls ++ mediums))} > $out/refs";
  large = mk "bench-large" "mkdir -p $out; head -c ${toString largeMb}000000 /dev/urandom > $out/blob";
}

let
  a = builtins.derivation {
    name = "ncps-vector-a";
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" "mkdir -p $out; echo hi > $out/x" ];
    PATH = "/usr/bin:/bin";
  };
  b = builtins.derivation {
    name = "ncps-vector-b";
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" "mkdir -p $out; echo ${a} > $out/ref" ];
    PATH = "/usr/bin:/bin";
  };
  c = builtins.derivation {
    name = "ncps-vector-c";
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" "mkdir -p $out; echo $out ${a} > $out/refs" ];
    PATH = "/usr/bin:/bin";
  };
in { inherit a b c; }

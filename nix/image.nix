# OCI image of ncps (`nix build .#image`, then `docker load < result` or push it with skopeo):
# the binary with `dbmate-ncps`, CA certificates for HTTPS upstreams, and nothing else. It runs
# as nobody (65534) with its data in the /storage volume, as the Helm chart (charts/ncps)
# mounts it; the chart passes `--config … serve` as arguments to the entrypoint.
{
  dockerTools,
  cacert,
  ncps,
}:

dockerTools.buildLayeredImage {
  name = "ncps";
  tag = ncps.version;
  contents = [
    ncps
    cacert
  ];
  # Writable places for a non-root user: /tmp, and /storage (a volume in practice).
  extraCommands = ''
    mkdir -p tmp storage
    chmod 1777 tmp
    chmod 0777 storage
  '';
  config = {
    Entrypoint = [ "${ncps}/bin/ncps" ];
    Cmd = [ "serve" ];
    User = "65534:65534";
    WorkingDir = "/storage";
    ExposedPorts."8501/tcp" = { };
    Volumes."/storage" = { };
    Env = [
      "SSL_CERT_FILE=${cacert}/etc/ssl/certs/ca-bundle.crt"
      # The data directory when neither flags nor a config file name one.
      "CACHE_STORAGE_LOCAL=/storage"
      "HOME=/storage"
    ];
  };
}

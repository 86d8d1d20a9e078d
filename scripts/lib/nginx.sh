# nginx for the benchmarks that compare ncps with it (scripts/bench, scripts/bench-narinfo):
# one configuration, so every comparison measures the same nginx. Needs wait_http
# (scripts/lib/bench.sh) and PIDS (an array of processes the caller stops on exit).

NGINX=$(command -v nginx || echo /usr/sbin/nginx)

nginx_conf() { # dir http-block-body: a minimal nginx.conf in dir
  mkdir -p "$1/tmp"
  cat >"$1/nginx.conf" <<CONF
daemon off;
$([ "$(id -u)" = 0 ] && echo "user root;  # the work dir is private to root")
worker_processes auto;
pid nginx.pid;
error_log error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  default_type application/octet-stream;
  sendfile on;
  tcp_nopush on;
  tcp_nodelay on;
  keepalive_timeout 75s;
  # nginx closes a keep-alive connection after 1000 requests by default; ncps (hyper) never
  # does. Same keep-alive behaviour for both: a connection lasts the whole measurement.
  keepalive_requests 1000000;
  client_body_temp_path tmp/body;
  proxy_temp_path tmp/proxy;
  fastcgi_temp_path tmp/fastcgi;
  uwsgi_temp_path tmp/uwsgi;
  scgi_temp_path tmp/scgi;
$2
}
CONF
}

start_nginx() { # dir port -> PID, URL
  "$NGINX" -p "$1/" -c "$1/nginx.conf" -e "$1/error.log" >>"$1/stderr.log" 2>&1 &
  PID=$!
  PIDS+=("$PID")
  URL=http://127.0.0.1:$2
  wait_http "$URL/bench-probe"
}

nginx_proxy_conf() { # dir port upstream-host:port: nginx.conf of a caching proxy (empty cache)
  # keys_zone: nginx keeps about 8,000 keys per MB and answers 500 when the zone is full, so
  # 256 MB holds the 1M-narinfo workload of scripts/bench-narinfo (mapped, touched as used).
  nginx_conf "$1" "  proxy_cache_path $1/cache levels=1:2 keys_zone=nix:256m max_size=100g
                   inactive=365d use_temp_path=off;
  upstream nix_upstream { server $3; keepalive 32; }
  server {
    listen 127.0.0.1:$2;
    location / {
      proxy_pass http://nix_upstream;
      proxy_http_version 1.1;
      proxy_set_header Connection \"\";
      proxy_buffering on;
      proxy_cache nix;
      proxy_cache_valid 200 365d;
      # proxy_cache_lock stays off (nginx's default): with it on, a request for a file being
      # fetched waits in 500 ms polls, which made cold closures 0.3-0.9 s slower here. Without
      # it, concurrent misses of one file all go upstream (ncps joins a single download).
      add_header X-Cache-Status \$upstream_cache_status always;
    }
  }"
}

nginx_pids() { echo "$1"; ps -o pid= --ppid "$1" | tr -d ' '; } # master -> master and workers

nginx_cache_status() { # url -> HIT, MISS, ... (nginx's X-Cache-Status)
  curl -s -o /dev/null -D - "$1" | tr -d '\r' | awk -F': ' 'tolower($1) == "x-cache-status" {print $2}'
}

# Throwaway Redis and Garage (a real S3 server) on 127.0.0.1 for the scale-out tests.
# Sourced by scripts/test: call start_scaleout_services DIR; it exports NCPS_TEST_REDIS_ADDR,
# NCPS_TEST_S3_ENDPOINT, NCPS_TEST_S3_KEY_ID, NCPS_TEST_S3_SECRET and NCPS_TEST_GARAGE_CONFIG,
# and stop_scaleout_services stops both. Garage is built once with cargo into a cache directory
# outside the repository and reused (about 10 minutes on 2 cores the first time).

GARAGE_VERSION=2.5.0
GARAGE_ROOT=${NCPS_TOOLS_DIR:-/var/cache/ncps-test-tools}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_for() { # what, seconds, command...
    local what=$1 limit=$2; shift 2
    for _ in $(seq $((limit * 10))); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.1
    done
    echo "error: $what did not come up within ${limit}s" >&2
    return 1
}

ensure_garage() {
    if [ ! -x "$GARAGE_ROOT/bin/garage" ]; then
        log "building garage $GARAGE_VERSION into $GARAGE_ROOT (once)"
        mkdir -p "$GARAGE_ROOT"
        cargo install garage --version "$GARAGE_VERSION" --locked --root "$GARAGE_ROOT"
    fi
    export PATH="$GARAGE_ROOT/bin:$PATH"
}

AZURITE_ROOT=$GARAGE_ROOT/azurite

# Azurite (the Azure Blob storage emulator) and the Azure SDK that creates its containers, from
# npm, into the tools directory once.
ensure_azurite() {
    if [ ! -x "$AZURITE_ROOT/node_modules/.bin/azurite-blob" ] ||
        [ ! -d "$AZURITE_ROOT/node_modules/@azure/storage-blob" ]; then
        log "installing Azurite from npm into $AZURITE_ROOT (once)"
        mkdir -p "$AZURITE_ROOT"
        (cd "$AZURITE_ROOT" && npm install --no-audit --no-fund --silent azurite@3 @azure/storage-blob@12)
    fi
}

start_scaleout_services() {
    local dir=$1
    mkdir -p "$dir/redis" "$dir/garage"
    local redis_port; redis_port=$(free_port)
    redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no \
        --daemonize yes --pidfile "$dir/redis/redis.pid" --logfile "$dir/redis/redis.log" --dir "$dir/redis"
    wait_for "redis" 20 redis-cli -p "$redis_port" ping || { tail -20 "$dir/redis/redis.log" >&2; return 1; }
    export NCPS_TEST_REDIS_ADDR="127.0.0.1:$redis_port"

    ensure_garage
    local g=$dir/garage rpc s3 admin
    rpc=$(free_port); s3=$(free_port); admin=$(free_port)
    cat > "$g/garage.toml" <<TOML
metadata_dir = "$g/meta"
data_dir = "$g/data"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:$rpc"
rpc_public_addr = "127.0.0.1:$rpc"
rpc_secret = "$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"
[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:$s3"
root_domain = ".s3.garage.localhost"
[admin]
api_bind_addr = "127.0.0.1:$admin"
admin_token = "$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
TOML
    garage -c "$g/garage.toml" server >"$g/garage.log" 2>&1 &
    echo $! > "$g/garage.pid"
    # `node id` reads the key from disk and can answer before the RPC port listens; `status`
    # needs the server itself, so the layout commands below cannot meet a refused connection.
    wait_for "garage" 30 garage -c "$g/garage.toml" status || { tail -30 "$g/garage.log" >&2; return 1; }
    local node; node=$(garage -c "$g/garage.toml" node id -q | cut -d@ -f1)
    garage -c "$g/garage.toml" layout assign -z dc1 -c 1G "$node" >/dev/null
    garage -c "$g/garage.toml" layout apply --version 1 >/dev/null
    local key_out; key_out=$(garage -c "$g/garage.toml" key create ncps-test-key)
    export NCPS_TEST_S3_KEY_ID; NCPS_TEST_S3_KEY_ID=$(awk '/Key ID/{print $3}' <<<"$key_out")
    export NCPS_TEST_S3_SECRET; NCPS_TEST_S3_SECRET=$(awk '/Secret key/{print $3}' <<<"$key_out")
    if [ -z "$NCPS_TEST_S3_KEY_ID" ] || [ -z "$NCPS_TEST_S3_SECRET" ]; then
        echo "error: could not read the Garage key from: $key_out" >&2
        return 1
    fi
    export NCPS_TEST_S3_ENDPOINT="http://127.0.0.1:$s3"
    export NCPS_TEST_GARAGE_CONFIG="$g/garage.toml"

    ensure_azurite
    local az=$dir/azurite blob
    blob=$(free_port)
    mkdir -p "$az"
    "$AZURITE_ROOT/node_modules/.bin/azurite-blob" --blobHost 127.0.0.1 --blobPort "$blob" \
        --location "$az" --skipApiVersionCheck --silent >"$az/azurite.log" 2>&1 &
    echo $! > "$az/azurite.pid"
    wait_for "azurite" 30 bash -c "exec 3<>/dev/tcp/127.0.0.1/$blob" || { tail -30 "$az/azurite.log" >&2; return 1; }
    export NCPS_TEST_AZURITE_URL="http://127.0.0.1:$blob"
    export NCPS_TEST_AZURE_NODE_MODULES="$AZURITE_ROOT/node_modules"
    log "redis on $NCPS_TEST_REDIS_ADDR, garage S3 on $NCPS_TEST_S3_ENDPOINT, azurite on $NCPS_TEST_AZURITE_URL"
}

stop_scaleout_services() {
    local dir=$1
    [ -f "$dir/redis/redis.pid" ] && kill "$(cat "$dir/redis/redis.pid")" 2>/dev/null || true
    [ -f "$dir/garage/garage.pid" ] && kill "$(cat "$dir/garage/garage.pid")" 2>/dev/null || true
    [ -f "$dir/azurite/azurite.pid" ] && kill "$(cat "$dir/azurite/azurite.pid")" 2>/dev/null || true
}

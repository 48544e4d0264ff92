# Shared by the SIPp, interop and benchmark scripts (source it; it defines one function).
# start_warden BINARY PORT DIR [RUST_LOG]: write DIR/warden.toml (UDP and TCP on
# 127.0.0.1:PORT, admin API on 127.0.0.1:PORT+1000, database in DIR, server.shards from
# $WARDEN_SHARDS if set, plus $WARDEN_EXTRA_TOML if set), start Warden in the background logging to
# DIR/warden.log, and return once its TCP port accepts connections (or fail after 20 s).
start_warden() {
  local bin=$1 port=$2 dir=$3 level=${4:-info}
  cat > "$dir/warden.toml" <<TOML
[sip]
listen = ["udp:127.0.0.1:$port", "tcp:127.0.0.1:$port"]
[database]
path = "$dir/warden.sqlite"
[server]
pid_file = "$dir/warden.pid"
${WARDEN_SHARDS:+shards = $WARDEN_SHARDS}
[admin]
listen = "127.0.0.1:$((port + 1000))"
${WARDEN_EXTRA_TOML:-}
TOML
  RUST_LOG=$level "$bin" --config "$dir/warden.toml" > "$dir/warden.log" 2>&1 &
  local i
  for i in $(seq 1 200); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "warden did not start; its log:" >&2
  cat "$dir/warden.log" >&2
  return 1
}

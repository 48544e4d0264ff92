#!/usr/bin/env bash
# What [cluster] costs: benches/cpu_per_call.sh's load (SIPp UAC -> Warden -> SIPp UAS, 1 s
# calls, media anchored, no RTP), every call screened, run twice in one go: a node alone,
# then the same node with [cluster] on a private redis-server on loopback. Prints both, the
# CPU per call and setup p99 of the second against the first, and the Redis commands per
# call (Redis's own count, the PINGs and lease renewals included).
# Usage: benches/cluster.sh [WARDEN_BINARY] [RATE] [SECONDS]   (needs sipp, redis-server)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin=${1:-$here/../target/release/warden}
rate=${2:-600}
secs=${3:-20}
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
redis-server --bind 127.0.0.1 --port "$port" --save "" --appendonly no > "$work/redis.log" 2>&1 &
for _ in $(seq 1 100); do redis-cli -p "$port" ping 2>/dev/null | grep -q PONG && break; sleep 0.1; done

cat > "$work/plan.toml" <<'PLAN'
[[rule]]
name = "screened"
do = [{ screen = "bench" }, { bridge = "user:${callee}" }]
PLAN
# Quotas and concurrency checked on every call, with limits no bench reaches.
screening="[dialplan]
file = \"$work/plan.toml\"
[screening]
calls_per_source_per_second = 0
[screening.profiles.bench]
checks = [\"quotas\", \"concurrency\"]
calls_per_hour = 100000000
calls_per_day = 100000000
max_concurrent = 1000000
max_concurrent_off_hours = 1000000"
commands() { redis-cli -p "$port" info stats | awk -F: '/^total_commands_processed/ {print $2 + 0}'; }
# Round trips the calls cost: the scripts run (one per call counted, one per call ended).
scripts() { redis-cli -p "$port" info commandstats | awk -F'[=,:]' '/^cmdstat_(evalsha|eval):/ {s += $3} END {print s + 0}'; }

alone=$(WARDEN_EXTRA_TOML="$screening" "$here/cpu_per_call.sh" "$bin" "$rate" "$secs")
echo "alone:      $alone"
before=$(commands) before_scripts=$(scripts)
clustered=$(WARDEN_EXTRA_TOML="$screening
[cluster]
node = \"bench\"
redis_url = \"redis://127.0.0.1:$port\"" "$here/cpu_per_call.sh" "$bin" "$rate" "$secs")
after=$(commands) after_scripts=$(scripts)
echo "clustered:  $clustered"
field() { sed -E "s/.* $1 ([0-9.]+).*/\\1/" <<< "$2"; }
us_alone=$(sed -E 's/.*, ([0-9]+) us per call.*/\1/' <<< "$alone")
us_cluster=$(sed -E 's/.*, ([0-9]+) us per call.*/\1/' <<< "$clustered")
calls=$(sed -E 's/.*: ([0-9]+) calls,.*/\1/' <<< "$clustered")
p99_alone=$(field "p99" "$alone")
p99_cluster=$(field "p99" "$clustered")
awk -v a="$us_alone" -v c="$us_cluster" -v pa="$p99_alone" -v pc="$p99_cluster" \
  -v n=$((after - before)) -v rt=$((after_scripts - before_scripts)) -v calls="$calls" 'BEGIN {
  printf "cluster/alone: CPU per call %.2fx (%d vs %d us), setup p99 +%.1f ms (%.1f vs %.1f); per call %.2f Redis round trips (scripts), %.1f Redis commands (inside scripts too)\n",
    c / a, c, a, pc - pa, pc, pa, (calls > 0 ? rt / calls : 0), (calls > 0 ? n / calls : 0) }'

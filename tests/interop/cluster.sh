#!/usr/bin/env bash
# Interop: two Warden nodes behind a real Kamailio dispatcher (examples/cluster/kamailio.cfg),
# sharing a private redis-server and one CDR database (PostgreSQL when
# WARDEN_TEST_POSTGRES_URL names one, as in CI; else one SQLite file). Checks:
#   1. baresip alice and carol register through Kamailio and land on different nodes; alice
#      calls carol and carol calls alice; each hears the other's tone;
#   2. a caller with a quota of 20 calls an hour makes 200 calls at 50/s spread over both
#      nodes: the overshoot (calls let through past 20) is measured, and must be 0;
#   3. a block-list entry added with `warden ctl` on node a blocks the next call on node b;
#   4. kill -9 of node a under SIPp load: Kamailio moves new calls to node b, the calls that
#      failed are at most those node a held, and after node a's restart (its journal) every
#      call SIPp made has exactly one record;
#   5. Redis stopped and started under SIPp load: calls go on (cluster.on_redis_down =
#      local), the nodes raise warden_cluster_redis_up = 0 and recover, no record lost.
# Usage: tests/interop/cluster.sh [WARDEN_BINARY]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
bin=${1:-$root/target/release/warden}
kam_port=5320 a_port=5330 b_port=5332 uas_port=5390
# A free port for this run's own redis-server (a fixed one may still be held by the last).
redis_port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; [ -n "${redis_pid:-}" ] && kill $redis_pid 2>/dev/null; [ -n "${KEEP:-}" ] || rm -rf "$work"' EXIT
source "$here/../lib/warden.sh"
source "$here/../lib/baresip.sh"
sipp_common=(-i 127.0.0.1 -nostdin -timeout 60s -timeout_error -max_recv_loops 1000)
fail=0
expect() { if [ "$1" = yes ]; then echo "ok   $2"; else echo "FAIL $2"; fail=1; fi; }
stat() { # sipp-stat-file column: the column's value on the file's last line
  awk -F';' -v c="$2" 'NR == 1 { for (i = 1; i <= NF; i++) if ($i == c) n = i } END { print (n ? $n : "?") }' "$1" 2>/dev/null || echo "?"
}
metric() { # admin-port name [label-filter]: the sum of the metric's samples
  curl -s "http://127.0.0.1:$1/metrics" | awk -v n="$2" -v f="${3:-}" \
    '$1 ~ "^"n"(\\{|$)" && index($1, f) { s += $2 } END { print s + 0 }'
}

# --- the engines -------------------------------------------------------------------
redis-server --bind 127.0.0.1 --port $redis_port --save "" --appendonly no > "$work/redis.log" 2>&1 &
redis_pid=$!
redis_up() { # wait until this run's Redis answers, or fail
  local i
  for i in $(seq 1 100); do redis-cli -p $redis_port ping 2>/dev/null | grep -q PONG && return 0; sleep 0.1; done
  echo "FAIL redis-server did not start on port $redis_port:"; tail -n 5 "$work/redis.log"; exit 1
}
redis_up
if [ -n "${WARDEN_TEST_POSTGRES_URL:-}" ]; then
  su postgres -c "psql -qc 'DROP DATABASE IF EXISTS warden_cluster'" > /dev/null
  su postgres -c "psql -qc 'CREATE DATABASE warden_cluster OWNER warden'" > /dev/null
  cdr_url="${WARDEN_TEST_POSTGRES_URL%/*}/warden_cluster"
else
  cdr_url="sqlite://$work/cdr.sqlite"
  echo "     (no WARDEN_TEST_POSTGRES_URL: the nodes share one SQLite file)"
fi
echo "     CDR database: ${cdr_url%%@*}@..."

cat > "$work/plan.toml" <<'PLAN'
[[rule]]
name = "quota"
when = { ruri_user = '^0207' }
do = [{ screen = "tight" }, { reject = 480 }]

[[rule]]
name = "blocked"
when = { ruri_user = '^00882' }
do = [{ screen = "lists" }, { reject = 480 }]

[[rule]]
name = "load"
when = { ruri_user = '^load' }
do = [{ bridge = "sip:${callee}@127.0.0.1:5390" }]

[[rule]]
name = "users"
do = [{ bridge = "user:${callee}" }]
PLAN
start_node() { # name port media-first
  mkdir -p "$work/$1"
  WARDEN_EXTRA_TOML="[dialplan]
file = \"$work/plan.toml\"
[media]
port_min = $3
port_max = $(($3 + 1999))
[cdr]
url = \"$cdr_url\"
[calls]
auth = false
[guard]
edge_proxies = [\"127.0.0.1/32\"]
[screening]
calls_per_source_per_second = 0
[screening.profiles.tight]
checks = [\"quotas\"]
calls_per_hour = 20
[screening.profiles.lists]
checks = [\"lists\"]
[cluster]
node = \"$1\"
redis_url = \"redis://127.0.0.1:$redis_port\"
lease_s = 3" start_warden "$bin" "$2" "$work/$1" info
}
start_node a $a_port 40000
start_node b $b_port 42000

printf '1 sip:127.0.0.1:%s\n1 sip:127.0.0.1:%s\n' $a_port $b_port > "$work/dispatcher.list"
sed -e "s|@KAMAILIO_IP@|127.0.0.1|g" -e "s|@KAMAILIO_PORT@|$kam_port|g" \
  -e "s|@DISPATCHER_LIST@|$work/dispatcher.list|g" "$root/examples/cluster/kamailio.cfg" > "$work/kamailio.cfg"
mkdir -p "$work/kam"
kamailio -f "$work/kamailio.cfg" -DD -E -Y "$work/kam" > "$work/kamailio.log" 2>&1 &
sleep 3 # the dispatcher's first probes

# --- 1. phones on different nodes call each other ----------------------------------
port=$kam_port
make_tones "$work"
# Kamailio places a REGISTER by a hash of its address of record: alice lands on node a,
# carol on node b (bob would land on a too).
carol=$(phone carol 5095 10000-10049 PCMU)
alice=$(phone alice 5098 10050-10099 PCMU)
call_between() { # callee-dir callee caller-dir [port dialled]
  rm -f "$1"/dump-*.wav "$3"/dump-*.wav
  baresip -f "$1" -t 12 > "$work/$2-callee.log" 2>&1 &
  local callee_pid=$!
  sleep 2
  baresip -f "$3" -t 7 -e "/dial sip:$2@127.0.0.1:${4:-$kam_port}" > "$work/$2-caller.log" 2>&1 || true
  wait $callee_pid || true
}
node_of() { grep -l "registrar: registered aor=$1 " "$work"/a/warden.log "$work"/b/warden.log 2>/dev/null | head -1 | xargs -r dirname | xargs -r basename; }
# Alice calls carol through Kamailio; carol calls alice at the node that does not hold her
# registration, which rings her from there along her Path.
call_between "$carol" carol "$alice"
echo "     alice registered on node $(node_of alice), carol on node $(node_of carol)"
expect "$([ -n "$(node_of alice)" ] && [ -n "$(node_of carol)" ] && [ "$(node_of alice)" != "$(node_of carol)" ] && echo yes || echo no)" "the phones registered through Kamailio on different nodes"
expect "$(grep -qE "Call established|established" "$work/carol-caller.log" && echo yes || echo no)" "alice's call to carol established"
recording "$carol" "carol (alice calling)"
recording "$alice" "alice (alice calling)"
other_node=$([ "$(node_of alice)" = a ] && echo $b_port || echo $a_port)
call_between "$alice" alice "$carol" "$other_node"
expect "$(grep -qE "Call established|established" "$work/alice-caller.log" && echo yes || echo no)" "carol's call to alice established"
recording "$alice" "alice (carol calling)"
recording "$carol" "carol (carol calling)"
entered() { grep -l "call started call=[0-9]* caller=$1 callee=$2 " "$work"/a/warden.log "$work"/b/warden.log | head -1 | xargs -r dirname | xargs -r basename; }
echo "     alice -> carol entered node $(entered alice carol); carol -> alice entered node $(entered carol alice)"
expect "$([ -n "$(entered carol alice)" ] && [ "$(entered carol alice)" != "$(node_of alice)" ] && echo yes || echo no)" "a node rang a phone registered on the other node"

# --- 2. one quota over both nodes ----------------------------------------------------
(cd "$work" && sipp 127.0.0.1:$kam_port "${sipp_common[@]}" -sf "$here/cluster/uac_screened.xml" \
  -s 02079460000 -m 200 -r 50 -p 5391 > "$work/quota.log" 2>&1) || true
allowed=$(( $(metric $((a_port + 1000)) warden_screening_decisions_total 'decision="allow"') + $(metric $((b_port + 1000)) warden_screening_decisions_total 'decision="allow"') ))
blocked=$(( $(metric $((a_port + 1000)) warden_screening_decisions_total 'decision="block"') + $(metric $((b_port + 1000)) warden_screening_decisions_total 'decision="block"') ))
on_a=$(metric $((a_port + 1000)) warden_screening_decisions_total)
echo "     quota 20/hour, 200 calls at 50/s: $allowed let through, $blocked refused ($on_a screened on node a); overshoot $((allowed - 20))"
expect "$([ "$allowed" -eq 20 ] && [ "$blocked" -eq 180 ] && [ "$on_a" -gt 0 ] && [ "$on_a" -lt 200 ] && echo yes || echo no)" "exactly 20 calls through a quota of 20 over both nodes"

# --- 3. a block-list entry added on one node blocks on the other ---------------------
"$bin" ctl --config "$work/a/warden.toml" screening add block prefix +882 --note IRSF > "$work/ctl.log" 2>&1
sleep 1
sed "s/@EXPECT@/603/" "$root/tests/sipp/uac_quota.xml" > "$work/uac_603.xml"
expect "$( (cd "$work" && sipp 127.0.0.1:$b_port "${sipp_common[@]}" -sf "$work/uac_603.xml" -s 00882123456 -m 1 -p 5392 > "$work/block.log" 2>&1) && echo yes || echo no)" "an entry added on node a blocks the next call on node b (603)"

# --- 4. kill -9 of a node under load -------------------------------------------------
(cd "$work" && sipp "${sipp_common[@]}" -sn uas -p $uas_port > "$work/uas.log" 2>&1) &
uas_pid=$!
sleep 0.5
(cd "$work" && sipp 127.0.0.1:$kam_port "${sipp_common[@]}" -sf "$root/tests/sipp/uac_plain.xml" \
  -s load-kill -m 300 -r 30 -p 5393 -trace_stat -stf "$work/kill.csv" -fd 1 > "$work/kill.log" 2>&1) &
load_pid=$!
sleep 4
a_pid=$(cat "$work/a/warden.pid")
kill -9 "$a_pid"
wait $load_pid || true
failed=$(stat "$work/kill.csv" "FailedCall(C)")
succeeded=$(stat "$work/kill.csv" "SuccessfulCall(C)")
echo "     300 calls at 30/s, node a killed after 4 s: $succeeded succeeded, $failed failed"
# SIPp may quit with a call still in its pause (one whose INVITE waited for the failover):
# that call is still up on node b, its record rightly open. End such calls, so that every
# record is expected closed.
for n in $(curl -s "http://127.0.0.1:$((b_port + 1000))/calls" |
  python3 -c 'import json,sys; print(" ".join(str(c["id"]) for c in json.load(sys.stdin) if c["callee"] == "load-kill"))'); do
  echo "     call $n on node b outlived SIPp; ending it"
  curl -s -X DELETE "http://127.0.0.1:$((b_port + 1000))/calls/$n" > /dev/null
done
# Node a back: its journal brings the records it had not stored yet.
rm -f "$work/a/warden.pid"
RUST_LOG=info "$bin" --config "$work/a/warden.toml" >> "$work/a/warden.log" 2>&1 &
sleep 6
records=$(curl -s "http://127.0.0.1:$((b_port + 1000))/cdrs?callee=load-kill&limit=10000" |
  tee "$work/kill-records.json" |
  python3 -c 'import json,sys; r=json.load(sys.stdin); ids=[x["a_call_id"] for x in r]; print(len(ids), len(set(ids)), sum(1 for x in r if x["end_reason"] is None), sum(1 for x in r if x["end_reason"] == "node-lost"))')
read -r total distinct still_open lost <<< "$records"
python3 -c 'import json,sys
for x in json.load(open(sys.argv[1])):
    if x["end_reason"] is None: print("     open:", {k: x[k] for k in ("instance", "boot", "a_call_id", "received_ms", "answered_ms", "final_code")})' "$work/kill-records.json"
echo "     records: $total for $distinct calls, $still_open open, $lost closed by the survivor (node-lost)"
expect "$([ "$total" -eq 300 ] && [ "$distinct" -eq 300 ] && [ "$still_open" -eq 0 ] && echo yes || echo no)" "every call SIPp made has exactly one record, all closed"
expect "$([ "$failed" != "?" ] && [ "$failed" -le 40 ] && echo yes || echo no)" "only the calls node a held failed (at most 40 of 300)"

# --- 5. Redis stopped and started under load -----------------------------------------
sleep 2
(cd "$work" && sipp 127.0.0.1:$kam_port "${sipp_common[@]}" -sf "$root/tests/sipp/uac_plain.xml" \
  -s load-redis -m 200 -r 25 -p 5394 -trace_stat -stf "$work/redis.csv" -fd 1 > "$work/redis-load.log" 2>&1) &
load_pid=$!
sleep 2
kill $redis_pid; wait $redis_pid 2>/dev/null || true
sleep 1
down=$(metric $((b_port + 1000)) warden_cluster_redis_up)
sleep 2
redis-server --bind 127.0.0.1 --port $redis_port --save "" --appendonly no >> "$work/redis.log" 2>&1 &
redis_pid=$!
redis_up
load_ok=yes
wait $load_pid || load_ok=no
sleep 3
up=$(metric $((b_port + 1000)) warden_cluster_redis_up)
records=$(curl -s "http://127.0.0.1:$((b_port + 1000))/cdrs?callee=load-redis&limit=10000" |
  python3 -c 'import json,sys; r=json.load(sys.stdin); print(len(r), sum(1 for x in r if x["end_reason"] is None))')
read -r total still_open <<< "$records"
echo "     Redis down for 3 s under 25 calls/s: redis_up $down while down, $up after; $total records, $still_open open"
expect "$([ "$load_ok" = yes ] && echo yes || echo no)" "every call went through while Redis was down (on_redis_down = local)"
expect "$([ "$down" = 0 ] && [ "$up" = 1 ] && echo yes || echo no)" "the nodes said Redis was down, and up again"
expect "$([ "$total" -eq 200 ] && [ "$still_open" -eq 0 ] && echo yes || echo no)" "no record lost"
kill $uas_pid 2>/dev/null || true

if [ $fail -ne 0 ]; then
  for f in a/warden b/warden kamailio; do echo "--- $f"; tail -n 30 "$work/$f.log"; done
fi
echo "cluster: $([ $fail -eq 0 ] && echo 'all checks passed' || echo 'failures above')"
exit $fail

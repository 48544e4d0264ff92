#!/usr/bin/env bash
# Interop: Warden as an IMS application server behind Kamailio (Debian's package) as a
# minimal S-CSCF stand-in (tests/interop/kamailio/scscf.cfg). A SIPp caller sends an
# INVITE to Kamailio; Kamailio adds a P-Charging-Vector and routes it to Warden with
# "Route: <sip:warden;lr;orig>, <sip:kamailio;lr;odi=...>"; Warden's dialplan sends the
# B-leg back along the remaining Route; Kamailio passes it to a SIPp callee, whose scenario
# fails unless the ICID arrived unchanged. Passes when both SIPp ends succeed and the logs
# show the call went caller -> Kamailio -> Warden -> Kamailio -> callee. Run twice: with
# Kamailio's Route entry as an address, and as a name Warden locates through a test name
# server on loopback (NAPTR, SRV with a dead first target: RFC 3263 failover), with
# ims.trusted_scscf given as a name too.
# Usage: tests/interop/kamailio_ims.sh [WARDEN_BINARY]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin=${1:-$here/../../target/release/warden}
port=${WARDEN_PORT:-5094} kam_port=5070 callee_port=5081 caller_port=5082
icid=ICID-KAM-4711
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; [ -n "${KEEP:-}" ] || rm -rf "$work"' EXIT

cat > "$work/plan.toml" <<'PLAN'
[[rule]]
name = "originating"
when = { session_case = "originating" }
do = [{ tag = "ims-orig" }, { bridge = "ims" }]

[[rule]]
name = "not from the IMS core"
do = [{ reject = 403, reason = "Only the IMS core may route here" }]
PLAN
source "$here/../lib/warden.sh"
sipp_common=(-i 127.0.0.1 -nostdin -timeout 60s -timeout_error -trace_err)
fail=0
expect() { if [ "$1" = yes ]; then echo "ok   $2"; else echo "FAIL $2"; fail=1; fi; }
has() { grep -qE "$2" "$1" && echo yes || echo no; }

# run_case NAME SCSCF_ROUTE SCSCF_ROUTE_RE [DNS]: one call with Kamailio's own Route entry
# as given; with DNS, Warden finds it through the test name server (RFC 3263).
run_case() {
  local name=$1 route=$2 route_re=$3 dns=${4:-}
  local dir="$work/$name"
  mkdir -p "$dir/run"
  local dns_toml=""
  if [ -n "$dns" ]; then dns_toml="[dns]
servers = [\"127.0.0.1:$dns_port\"]"; fi
  WARDEN_EXTRA_TOML="[dialplan]
file = \"$work/plan.toml\"
[ims]
trusted_scscf = [\"$scscf_trust\"]
$dns_toml" start_warden "$bin" "$port" "$dir" info
  sed -e "s/@KAMAILIO_PORT@/$kam_port/g" -e "s/@WARDEN_PORT@/$port/g" \
      -e "s/@CALLEE_PORT@/$callee_port/g" -e "s/@ICID@/$icid/g" \
      -e "s/@SCSCF_ROUTE@/$route/g" -e "s/@SCSCF_ROUTE_RE@/$route_re/g" \
      "$here/kamailio/scscf.cfg" > "$dir/scscf.cfg"
  kamailio -f "$dir/scscf.cfg" -DD -E -Y "$dir/run" > "$dir/kamailio.log" 2>&1 &
  local kam_pid=$!
  for i in $(seq 1 50); do grep -q "init_tcp\|listening on" "$dir/kamailio.log" 2>/dev/null && break; sleep 0.1; done
  sleep 0.5
  (cd "$dir" && sipp "${sipp_common[@]}" -sf "$here/kamailio/callee.xml" -p "$callee_port" -m 1 \
    -error_file "$dir/callee.err" > "$dir/callee.log" 2>&1) &
  local callee_pid=$!
  sleep 0.3
  if (cd "$dir" && sipp 127.0.0.1:$kam_port "${sipp_common[@]}" -sf "$here/kamailio/caller.xml" -s +41449999999 -p "$caller_port" \
        -m 1 -d 500 -error_file "$dir/caller.err" > "$dir/caller.log" 2>&1); then
    expect yes "$name: the caller's call through Kamailio and Warden succeeded"
  else
    expect no "$name: the caller's call through Kamailio and Warden succeeded"
  fi
  if wait $callee_pid; then
    expect yes "$name: the callee was reached and saw the ICID unchanged ($icid)"
  else
    expect no "$name: the callee was reached and saw the ICID unchanged ($icid)"
  fi
  expect "$(has "$dir/warden.log" 'call started.*rule=originating')" "$name: warden served the call as originating AS"
  expect "$(has "$dir/kamailio.log" 'initial INVITE to the AS')" "$name: kamailio routed the initial INVITE to warden"
  expect "$(has "$dir/kamailio.log" 'B-leg back from the AS')" "$name: warden's B-leg came back through kamailio's Route"
  if [ -n "$dns" ]; then
    expect "$(has "$dir/warden.log" 'trying the next destination')" "$name: the first SRV target (down) was given up for the second"
  fi
  if [ $fail -ne 0 ]; then
    for f in warden kamailio caller callee; do echo "--- $name $f"; tail -n 25 "$dir/$f.log"; done
    tail -n 20 "$dir"/*.err 2>/dev/null || true
  fi
  kill "$(cat "$dir/warden.pid")" "$kam_pid" 2>/dev/null || true
  wait "$kam_pid" 2>/dev/null || true
  sleep 1
}

scscf_trust=127.0.0.1
run_case by-address "127.0.0.1:$kam_port" "127\\.0\\.0\\.1:$kam_port"

# By name: NAPTR for ims.test says UDP via _sip._udp.ims.test, whose SRV lists a dead
# target first (priority 10, nothing listens) and Kamailio second (priority 20). Warden
# gives the first up at Timer B (32 s) and reaches Kamailio on the second.
dns_port=15398
cat > "$work/zone.txt" <<ZONE
ims.test NAPTR 10 10 s SIP+D2U _sip._udp.ims.test
_sip._udp.ims.test SRV 10 0 5079 dead.ims.test
_sip._udp.ims.test SRV 20 0 $kam_port scscf.ims.test
dead.ims.test A 127.0.0.1
scscf.ims.test A 127.0.0.1
ZONE
python3 "$here/../lib/dns_server.py" "$dns_port" "$work/zone.txt" &
scscf_trust=localhost
run_case by-name "ims.test" "ims\\.test" dns
echo "kamailio ims: $([ $fail -eq 0 ] && echo 'all checks passed' || echo 'failures above')"
exit $fail

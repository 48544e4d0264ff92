#!/usr/bin/env bash
# Interop: Warden as an IMS application server behind Kamailio (Debian's package) as a
# minimal S-CSCF stand-in (tests/interop/kamailio/scscf.cfg). A SIPp caller sends an
# INVITE to Kamailio; Kamailio adds a P-Charging-Vector and routes it to Warden with
# "Route: <sip:warden;lr;orig>, <sip:kamailio;lr;odi=...>"; Warden's dialplan sends the
# B-leg back along the remaining Route; Kamailio passes it to a SIPp callee, whose scenario
# fails unless the ICID arrived unchanged. Passes when both SIPp ends succeed and the logs
# show the call went caller -> Kamailio -> Warden -> Kamailio -> callee.
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
WARDEN_EXTRA_TOML="[dialplan]
file = \"$work/plan.toml\"
[ims]
trusted_scscf = [\"127.0.0.1\"]" start_warden "$bin" "$port" "$work" info

sed -e "s/@KAMAILIO_PORT@/$kam_port/g" -e "s/@WARDEN_PORT@/$port/g" \
    -e "s/@CALLEE_PORT@/$callee_port/g" -e "s/@ICID@/$icid/g" \
    "$here/kamailio/scscf.cfg" > "$work/scscf.cfg"
mkdir -p "$work/run"
kamailio -f "$work/scscf.cfg" -DD -E -Y "$work/run" > "$work/kamailio.log" 2>&1 &
for i in $(seq 1 50); do grep -q "init_tcp\|listening on" "$work/kamailio.log" 2>/dev/null && break; sleep 0.1; done
sleep 0.5

sipp_common=(-i 127.0.0.1 -nostdin -timeout 20s -timeout_error -trace_err)
(cd "$work" && sipp "${sipp_common[@]}" -sf "$here/kamailio/callee.xml" -p "$callee_port" -m 1 \
  -error_file "$work/callee.err" > "$work/callee.log" 2>&1) &
callee_pid=$!
sleep 0.3
fail=0
expect() { if [ "$1" = yes ]; then echo "ok   $2"; else echo "FAIL $2"; fail=1; fi; }
if (cd "$work" && sipp 127.0.0.1:$kam_port "${sipp_common[@]}" -sf "$here/kamailio/caller.xml" -s +41449999999 -p "$caller_port" \
      -m 1 -d 500 -error_file "$work/caller.err" > "$work/caller.log" 2>&1); then
  expect yes "the caller's call through Kamailio and Warden succeeded"
else
  expect no "the caller's call through Kamailio and Warden succeeded"
fi
if wait $callee_pid; then
  expect yes "the callee was reached and saw the ICID unchanged ($icid)"
else
  expect no "the callee was reached and saw the ICID unchanged ($icid)"
fi
has() { grep -qE "$2" "$1" && echo yes || echo no; }
expect "$(has "$work/warden.log" 'call started.*rule=originating')" "warden served the call as originating AS"
expect "$(has "$work/kamailio.log" 'initial INVITE to the AS')" "kamailio routed the initial INVITE to warden"
expect "$(has "$work/kamailio.log" 'B-leg back from the AS')" "warden's B-leg came back through kamailio's Route"
if [ $fail -ne 0 ]; then
  for f in warden kamailio caller callee; do echo "--- $f"; tail -n 25 "$work/$f.log"; done
  tail -n 20 "$work"/*.err 2>/dev/null || true
fi
echo "kamailio ims: $([ $fail -eq 0 ] && echo 'all checks passed' || echo 'failures above')"
exit $fail

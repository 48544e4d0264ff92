#!/usr/bin/env bash
# Interop: blind transfer between baresip phones. Alice calls bob through Warden; after
# 3 s bob transfers her to carol (baresip's /transfer, sent to bob's UDP console): REFER.
# Passes when Warden completed the transfer (202, NOTIFY sipfrag to bob, carol answered),
# carol's recording holds alice's 1 kHz tone, and the call records are linked: the first
# ends as "transferred" and the alice-carol record names it.
# Usage: tests/interop/baresip_transfer.sh [WARDEN_BINARY]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin=${1:-$here/../../target/release/warden}
port=${WARDEN_PORT:-5094}
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; [ -n "${KEEP:-}" ] || rm -rf "$work"' EXIT

source "$here/../lib/warden.sh"
source "$here/../lib/baresip.sh"
WARDEN_EXTRA_TOML="[media]
port_min = 36200
port_max = 36299" start_warden "$bin" "$port" "$work" info
make_tones "$work"

bob=$(phone bob 5095 10000-10049 PCMU)
carol=$(phone carol 5098 10050-10099 PCMU)
alice=$(phone alice 5101 10100-10149 PCMU)
# Bob takes commands on a UDP console, so the transfer can come mid-call.
printf 'module cons.so\ncons_listen 127.0.0.1:5555\n' >> "$bob/config"
baresip -f "$bob" -t 14 > "$work/bob.log" 2>&1 &
bob_pid=$!
baresip -f "$carol" -t 14 > "$work/carol.log" 2>&1 &
carol_pid=$!
sleep 2
baresip -f "$alice" -t 11 -e "/dial sip:bob@127.0.0.1:$port" > "$work/alice.log" 2>&1 &
alice_pid=$!
sleep 3
printf '/transfer sip:carol@127.0.0.1:%s\n' "$port" > /dev/udp/127.0.0.1/5555
wait $alice_pid $bob_pid $carol_pid || true

fail=0
expect() { if [ "$1" = yes ]; then echo "ok   $2"; else echo "FAIL $2"; fail=1; fi; }
has() { grep -qiE "$2" "$1" && echo yes || echo no; }
expect "$(has "$work/warden.log" 'transfer requested')" "warden: bob's REFER taken (202)"
expect "$(has "$work/bob.log" 'transferring call|transfer')" "bob: transfer sent"
expect "$(has "$work/carol.log" 'Call established|established')" "carol: call established"
expect "$(has "$work/warden.log" 'transfer completed')" "warden: transfer completed"
rec=$(ls "$carol"/dump-*-dec.wav 2>/dev/null | head -1 || true)
if [ -n "$rec" ]; then
  sox "$rec" "$work/cut.wav" trim 1 2 remix -
  rms=$(sox "$work/cut.wav" -n sinc 940-1060 stat 2>&1 | awk '/RMS +amplitude/ {print $3}')
  echo "     carol's recording: 1 kHz RMS $rms"
  expect "$(awk -v r="$rms" 'BEGIN {print (r > 0.05) ? "yes" : "no"}')" "carol hears alice's tone"
else
  expect no "carol recorded the call (sndfile dump)"
fi
records=$(python3 -c "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:$((port + 1000))/cdrs?limit=10').read().decode())")
expect "$(python3 - "$records" <<'PY'
import json, sys
records = json.loads(sys.argv[1])
first = [r for r in records if r["callee"] == "bob" and r["end_reason"] == "transferred"]
second = [r for r in records if r["callee"] == "carol" and r["caller"] == "alice"]
print("yes" if first and second and second[0]["linked_id"] == first[0]["id"] else "no")
PY
)" "call records: alice-bob transferred, alice-carol linked to it"

if [ $fail -ne 0 ]; then
  for f in warden alice bob carol; do echo "--- $f"; tail -n 25 "$work/$f.log"; done
fi
echo "baresip transfer: $([ $fail -eq 0 ] && echo 'all checks passed' || echo 'failures above')"
exit $fail

#!/usr/bin/env bash
# SIPp scenarios against a real Warden: register, basic call, cancel, busy.
# Usage: tests/sipp/run.sh [WARDEN_BINARY]   (default: target/release/warden)
# Each case registers a SIPp UAS as "bob-CASE", then a SIPp UAC calls it through Warden
# (one user per case: a UAS that has exited must not stay a fork target).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin=${1:-$here/../../target/release/warden}
port=${WARDEN_PORT:-5090}
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

source "$here/../lib/warden.sh"
start_warden "$bin" "$port" "$work" warn

sipp_common=(-i 127.0.0.1 -nostdin -timeout 30s -timeout_error -max_recv_loops 1000 -trace_err)
fail=0
case_run() { # name uas-scenario uac-scenario calls uas-port
  local name=$1 uas=$2 uac=$3 calls=$4 uport=$5
  (cd "$work" && sipp "${sipp_common[@]}" $uas -p "$uport" -m "$calls" -error_file "$work/$name-uas.err" > "$work/$name-uas.log" 2>&1) &
  local uas_pid=$!
  sleep 0.3
  (cd "$work" && sipp 127.0.0.1:$port "${sipp_common[@]}" -sf "$here/register.xml" -s "bob-$name" -key contact_port "$uport" -m 1 > "$work/$name-reg.log" 2>&1) \
    || { echo "FAIL $name: register"; fail=1; return; }
  if (cd "$work" && sipp 127.0.0.1:$port "${sipp_common[@]}" $uac -s "bob-$name" -m "$calls" -r 10 -d 200 -error_file "$work/$name-uac.err" > "$work/$name-uac.log" 2>&1) && wait $uas_pid; then
    echo "ok   $name ($calls calls)"
  else
    echo "FAIL $name"; tail -n 20 "$work"/$name-*.err 2>/dev/null || true; fail=1
  fi
}
(cd "$work" && sipp 127.0.0.1:$port "${sipp_common[@]}" -sf "$here/register.xml" -s alice -key contact_port 5999 -m 3 > "$work/register.log" 2>&1) \
  && echo "ok   register (3 registrations)" || { echo "FAIL register"; fail=1; }
case_run basic "-sn uas" "-sn uac" 20 5091
case_run cancel "-sf $here/uas_ring.xml" "-sf $here/uac_cancel.xml" 5 5092
case_run busy "-sf $here/uas_busy.xml" "-sf $here/uac_busy.xml" 5 5093
if [ $fail -ne 0 ]; then echo "--- warden log"; tail -n 40 "$work/warden.log"; fi
echo "sipp: $([ $fail -eq 0 ] && echo '4 passed, 0 failed' || echo 'failures above')"
exit $fail

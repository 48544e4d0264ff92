#!/usr/bin/env bash
# SIPp sends requests that do not parse but can be answered, each followed by a good
# OPTIONS: Warden answers each with 400 (and its reason), still answers the next one, and
# accepts a Request-URI parameter repeated with the same value (what baresip 1.0 sends).
# Usage: tests/sipp/malformed.sh [WARDEN_BINARY]   (default: target/release/warden)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin=${1:-$here/../../target/release/warden}
port=${WARDEN_PORT:-5290}
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; [ -n "${KEEP:-}" ] || rm -rf "$work"' EXIT
source "$here/../lib/warden.sh"
start_warden "$bin" "$port" "$work" info

fail=0 passed=0
case_run() { # name request-uri content-length expected-status transport
  local scenario="$work/$1.xml" transport=${5:-u1}
  sed -e "s|@URI@|$2|" -e "s|@LENGTH@|$3|" -e "s|@EXPECT@|$4|" "$here/uac_malformed.xml" > "$scenario"
  if (cd "$work" && sipp 127.0.0.1:$port -i 127.0.0.1 -nostdin -t "$transport" -timeout 10s -timeout_error \
        -sf "$scenario" -m 1 -trace_err -error_file "$work/$1.err" > "$work/$1.log" 2>&1); then
    echo "ok   $1: answered $4, the next request answered 200"; passed=$((passed + 1))
  else
    echo "FAIL $1"; tail -n 20 "$work/$1.err" 2>/dev/null || true; fail=1
  fi
}
good="sip:warden@127.0.0.1:$port"
case_run content-length-past-datagram "$good" 400 400
case_run content-length-not-a-number "$good" abc 400
case_run port-not-a-number "sip:warden@127.0.0.1:50a0" 5 400
case_run parameter-with-two-values "$good;transport=udp;transport=tcp" 5 400
case_run parameter-repeated-alike "$good;transport=udp;transport=udp" 5 200
case_run tcp-port-not-a-number "sip:warden@127.0.0.1:50a0;transport=tcp" 5 400 t1
case_run tcp-parameter-repeated-alike "$good;transport=tcp;transport=tcp" 5 200 t1
grep -q "refused unparseable request with 400" "$work/warden.log" \
  && echo "ok   warden: each refusal logged with its reason" || { echo "FAIL no refusal logged"; fail=1; }
answered=$(curl -fsS "http://127.0.0.1:$((port + 1000))/metrics" | awk '$1 ~ /^warden_sip_malformed_total\{handling="answered"/ { n += $2 } END { print n + 0 }')
echo "     warden_sip_malformed_total{handling=\"answered\"}: $answered"
[ "$answered" -ge 5 ] && echo "ok   counted" || { echo "FAIL counted ($answered)"; fail=1; }
if [ $fail -ne 0 ]; then echo "--- warden log"; tail -n 30 "$work/warden.log"; fi
echo "sipp malformed: $([ $fail -eq 0 ] && echo "$passed cases passed" || echo 'failures above')"
exit $fail

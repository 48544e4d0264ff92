#!/usr/bin/env bash
# SIPp scenarios against a real Warden: register, basic call, cancel, busy, and a burst of
# calls from one user past its screening quota.
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

# Quota: a second Warden whose dialplan screens every call with a profile allowing 10
# calls an hour, then refuses with 480. A burst of 10 calls at 50/s gets 480s; the next
# 5 get screening's 603.
quota_dir="$work/quota"
mkdir -p "$quota_dir"
cat > "$quota_dir/plan.toml" <<'TOML'
[[rule]]
name = "screened"
do = [{ screen = "burst" }, { reject = 480 }]
TOML
qport=$((port + 10))
WARDEN_EXTRA_TOML="[dialplan]
file = \"$quota_dir/plan.toml\"
[screening]
calls_per_source_per_second = 0
[screening.profiles.burst]
checks = [\"quotas\"]
calls_per_hour = 10" start_warden "$bin" "$qport" "$quota_dir" warn
quota_case() { # expected-code calls
  sed "s/@EXPECT@/$1/" "$here/uac_quota.xml" > "$quota_dir/uac_$1.xml"
  (cd "$quota_dir" && sipp 127.0.0.1:$qport "${sipp_common[@]}" -sf "$quota_dir/uac_$1.xml" -s 02079460000 \
     -m "$2" -r 50 -l 10 -error_file "$quota_dir/uac_$1.err" > "$quota_dir/uac_$1.log" 2>&1)
}
if quota_case 480 10 && quota_case 603 5; then
  echo "ok   quota (10 calls within quota got 480, 5 past it got 603)"
else
  echo "FAIL quota"; tail -n 20 "$quota_dir"/*.err 2>/dev/null || true; tail -n 20 "$quota_dir/warden.log"; fail=1
fi

if [ $fail -ne 0 ]; then echo "--- warden log"; tail -n 40 "$work/warden.log"; fi
echo "sipp: $([ $fail -eq 0 ] && echo '5 passed, 0 failed' || echo 'failures above')"
exit $fail

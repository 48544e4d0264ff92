#!/usr/bin/env bash
# SIPp scenarios for carrier and IMS signalling against a real Warden: reliable
# provisionals on both legs (RFC 3262), an offer in a reliable 183 answered in PRACK and an
# early UPDATE (RFC 3311), session timers (RFC 4028: refresh by UPDATE and by re-INVITE,
# 422 and the retry, a refresh that never comes).
# Usage: tests/sipp/carrier.sh [WARDEN_BINARY]   (default: target/release/warden)
# Each case registers a SIPp UAS as "bob-CASE" and calls it with a SIPp UAC. The two
# session-timer cases wait for refreshes (45 s, 60 s) and run side by side.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin=${1:-$here/../../target/release/warden}
port=${WARDEN_PORT:-5190}
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

source "$here/../lib/warden.sh"
# No RTP flows in these calls: the media timeout must not end them before the timers do.
WARDEN_EXTRA_TOML="[media]
rtp_timeout_s = 600" start_warden "$bin" "$port" "$work" info

sipp_common=(-i 127.0.0.1 -nostdin -timeout 100s -timeout_error -max_recv_loops 1000 -trace_err)
# case_run NAME UAS UAC UAS-PORT: one call; prints ok or FAIL and writes $work/NAME.result.
case_run() {
  local name=$1 uas=$2 uac=$3 uport=$4 result=FAIL
  (cd "$work" && exec sipp "${sipp_common[@]}" -sf "$here/$uas" -p "$uport" -m 1 -error_file "$work/$name-uas.err" > "$work/$name-uas.log" 2>&1) &
  local uas_pid=$!
  sleep 0.3
  if (cd "$work" && sipp 127.0.0.1:$port "${sipp_common[@]}" -sf "$here/register.xml" -s "bob-$name" -key contact_port "$uport" -m 1 > "$work/$name-reg.log" 2>&1) \
    && (cd "$work" && sipp 127.0.0.1:$port "${sipp_common[@]}" -sf "$here/$uac" -s "bob-$name" -p $((uport + 100)) -m 1 -error_file "$work/$name-uac.err" > "$work/$name-uac.log" 2>&1) \
    && wait $uas_pid; then
    result=ok
  fi
  echo "$result" > "$work/$name.result"
  if [ $result = ok ]; then echo "ok   $name"; else echo "FAIL $name"; tail -n 30 "$work"/$name-*.err "$work"/$name-*.log 2>/dev/null || true; fi
}

case_run refresh uas_refresh.xml uac_refresh.xml 5291 &
refresh_pid=$!
case_run expiry uas_expiry.xml uac_expiry.xml 5292 &
expiry_pid=$!
case_run caller-100rel uas_slow.xml uac_100rel.xml 5293
case_run callee-100rel uas_100rel.xml uac_plain.xml 5294
case_run prack-answer uas_offer_183.xml uac_late_offer.xml 5295
case_run session-422 uas_422.xml uac_422.xml 5296
wait "$refresh_pid" "$expiry_pid" || true

if grep -q "no session refresh in time" "$work/warden.log"; then
  echo "ok   expiry logged"; echo ok > "$work/expiry-log.result"
else
  echo "FAIL expiry: Warden did not log the session's end"; echo FAIL > "$work/expiry-log.result"
fi
passed=$(cat "$work"/*.result | grep -c '^ok$' || true)
failed=$(cat "$work"/*.result | grep -vc '^ok$' || true)
if [ "$failed" -ne 0 ]; then echo "--- warden log"; tail -n 60 "$work/warden.log"; fi
echo "sipp carrier: $passed passed, $failed failed"
[ "$failed" -eq 0 ]

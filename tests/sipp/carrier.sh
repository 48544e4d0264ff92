#!/usr/bin/env bash
# SIPp scenarios for carrier and IMS signalling against a real Warden: reliable
# provisionals on both legs (RFC 3262), an offer in a reliable 183 answered in PRACK and an
# early UPDATE (RFC 3311), session timers (RFC 4028: refresh by UPDATE and by re-INVITE,
# 422 and the retry, a refresh that never comes).
# Usage: tests/sipp/carrier.sh [WARDEN_BINARY]   (default: target/release/warden)
# Each case registers a SIPp UAS as "bob-CASE" and calls it with a SIPp UAC. The two
# session-timer cases wait for refreshes (45 s, 60 s) and run side by side. Then a callee's
# 302 followed and relayed, a MESSAGE to a registered user, and last an emergency call from
# a caller past its quota while Warden shuts down (a long call holds the drain open).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin=${1:-$here/../../target/release/warden}
port=${WARDEN_PORT:-5190}
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; [ -n "${KEEP:-}" ] || rm -rf "$work"' EXIT

source "$here/../lib/warden.sh"
cat > "$work/plan.toml" <<'TOML'
[[rule]]
name = "emergency"
when = { emergency = true }
do = [{ bridge = "user:emergency" }]

[[rule]]
name = "relay redirects"
when = { ruri_user = '^bob-relay$' }
do = [{ on_redirect = "relay" }, { bridge = "user:${callee}" }]

[[rule]]
name = "screened"
when = { ruri_user = '^0\d+$' }
do = [{ screen = "burst" }, { reject = 480 }]

[[rule]]
name = "users"
do = [{ bridge = "user:${callee}" }]
TOML
# No RTP flows in these calls: the media timeout must not end them before the timers do.
WARDEN_EXTRA_TOML="[media]
rtp_timeout_s = 600
[dialplan]
file = \"$work/plan.toml\"
[screening]
calls_per_source_per_second = 0
[screening.profiles.burst]
checks = [\"quotas\"]
calls_per_hour = 1" start_warden "$bin" "$port" "$work" info

sipp_common=(-i 127.0.0.1 -nostdin -timeout 100s -timeout_error -max_recv_loops 1000 -trace_err)
# case_run NAME UAS UAC UAS-PORT: one call; prints ok or FAIL and writes $work/NAME.result.
case_run() {
  local name=$1 uas=$2 uac=$3 uport=$4 result=FAIL
  # shellcheck disable=SC2086 # SIPP_UAS_EXTRA is a list of words
  (cd "$work" && exec sipp "${sipp_common[@]}" -sf "$here/$uas" ${SIPP_UAS_EXTRA:-} -p "$uport" -m 1 -error_file "$work/$name-uas.err" > "$work/$name-uas.log" 2>&1) &
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
# A 302 followed: the redirecting UAS sends Warden to a second UAS that answers.
(cd "$work" && exec sipp "${sipp_common[@]}" -sf "$here/uas_slow.xml" -p 5297 -m 1 -error_file "$work/follow-target.err" > "$work/follow-target.log" 2>&1) &
target_pid=$!
SIPP_UAS_EXTRA="-key target_port 5297" case_run follow-302 uas_302.xml uac_plain.xml 5298
wait "$target_pid" && echo ok > "$work/follow-target.result" || { echo "FAIL follow-302: the target was not called"; echo FAIL > "$work/follow-target.result"; }
SIPP_UAS_EXTRA="-key target_port 5297" case_run relay uas_302.xml uac_302.xml 5299
case_run message uas_message.xml uac_message.xml 5300
wait "$refresh_pid" "$expiry_pid" || true

# Shutdown: "burst" uses its one call an hour (480 from the plan), then gets screening's
# 603; a long call holds Warden's drain open; after SIGTERM a new call gets 503 while the
# same caller's emergency call (112) is answered.
quota_call() { # name expected-code service
  sed "s/@EXPECT@/$2/" "$here/uac_quota.xml" > "$work/uac_$1.xml"
  if (cd "$work" && sipp 127.0.0.1:$port "${sipp_common[@]}" -sf "$work/uac_$1.xml" -s "$3" -p 5310 -m 1 -error_file "$work/$1.err" > "$work/$1.log" 2>&1); then
    echo "ok   $1 ($2)"; echo ok > "$work/$1.result"
  else
    echo "FAIL $1: expected $2"; tail -n 20 "$work/$1.err" 2>/dev/null || true; echo FAIL > "$work/$1.result"
  fi
}
quota_call quota-first 480 02079460000
quota_call quota-past 603 02079460000
(cd "$work" && exec sipp "${sipp_common[@]}" -sf "$here/uas_slow.xml" -p 5311 -m 1 > "$work/hold-uas.log" 2>&1) &
(cd "$work" && exec sipp "${sipp_common[@]}" -sf "$here/uas_slow.xml" -p 5312 -m 1 -error_file "$work/emergency-uas.err" > "$work/emergency-uas.log" 2>&1) &
emergency_uas=$!
sleep 0.3
for pair in bob-hold:5311 emergency:5312; do
  (cd "$work" && sipp 127.0.0.1:$port "${sipp_common[@]}" -sf "$here/register.xml" -s "${pair%%:*}" -key contact_port "${pair##*:}" -m 1 > "$work/reg-${pair%%:*}.log" 2>&1)
done
(cd "$work" && exec sipp 127.0.0.1:$port "${sipp_common[@]}" -sf "$here/uac_hold.xml" -s bob-hold -p 5313 -m 1 > "$work/hold-uac.log" 2>&1) &
hold_pid=$!
sleep 2
kill -TERM "$(cat "$work/warden.pid")"
sleep 0.5
quota_call draining 503 02079460001
if (cd "$work" && sipp 127.0.0.1:$port "${sipp_common[@]}" -sf "$here/uac_emergency.xml" -s 112 -p 5314 -m 1 -error_file "$work/emergency.err" > "$work/emergency.log" 2>&1) && wait "$emergency_uas"; then
  echo "ok   emergency call answered past the quota, during shutdown"; echo ok > "$work/emergency.result"
else
  echo "FAIL emergency call"; tail -n 20 "$work/emergency.err" 2>/dev/null || true; echo FAIL > "$work/emergency.result"
fi
wait "$hold_pid" || true

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

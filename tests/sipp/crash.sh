#!/usr/bin/env bash
# Crash test for the call record journal: while a SIPp caller makes calls through Warden to
# a SIPp callee, Warden is killed with SIGKILL at random moments (KILLS times, 100 by
# default) and started again on the same data. SIPp retransmits what a dead Warden did not
# answer, so every call reaches some Warden. At the end: every call SIPp made has a record
# (its Call-ID in the database; a call whose INVITE reached two Wardens has one per
# Warden), the count of distinct calls recorded equals the calls SIPp made, and no record
# is left open.
# Usage: tests/sipp/crash.sh [WARDEN_BINARY]   (default: target/release/warden)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin=${1:-$here/../../target/release/warden}
port=${WARDEN_PORT:-5490}
kills=${KILLS:-100}
rate=${CRASH_RATE:-20}
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; [ -n "${KEEP:-}" ] || rm -rf "$work"' EXIT
source "$here/../lib/warden.sh"
# No RTP flows: the media timeout must not end calls; calls last 200 ms.
export WARDEN_EXTRA_TOML="[media]
rtp_timeout_s = 600
[screening]
calls_per_source_per_second = 0"
start_warden "$bin" "$port" "$work" warn
common=(-i 127.0.0.1 -nostdin -max_recv_loops 1000)
(cd "$work" && exec sipp "${common[@]}" -sn uas -p 5495 > uas.log 2>&1) &
uas=$!
sleep 0.3
(cd "$work" && sipp 127.0.0.1:$port "${common[@]}" -sf "$here/register.xml" -s bob-crash -key contact_port 5495 -m 1 > reg.log 2>&1)
# Enough calls to outlast the kills (about 0.8 s each); SIPp gives a call up after 32 s
# of retransmissions (Timer B), far longer than Warden is ever down.
calls=$(( rate * kills ))
(cd "$work" && exec sipp 127.0.0.1:$port "${common[@]}" -sn uac -s bob-crash -r "$rate" -m "$calls" -d 200 \
   -recv_timeout 10000 -trace_stat -stf stat.csv -fd 1 > uac.log 2>&1) &
uac=$!
for i in $(seq 1 "$kills"); do
  sleep "$(awk -v s="$RANDOM" 'BEGIN { srand(s); printf "%.2f", 0.2 + rand() * 0.6 }')"
  kill -KILL "$(cat "$work/warden.pid")"
  wait "$(cat "$work/warden.pid")" 2>/dev/null || true
  start_warden "$bin" "$port" "$work" warn
done
echo "     $kills kills done; waiting for SIPp's last calls"
wait $uac || true
kill -TERM "$(cat "$work/warden.pid")"
for i in $(seq 1 100); do kill -0 "$(cat "$work/warden.pid")" 2>/dev/null || break; sleep 0.1; done
kill $uas 2>/dev/null || true

made=$(awk -F';' 'NR==1 { for (i = 1; i <= NF; i++) if ($i == "OutgoingCall(C)") c = i } END { print $c + 0 }' "$work/stat.csv")
answered=$(awk -F';' 'NR==1 { for (i = 1; i <= NF; i++) if ($i == "SuccessfulCall(C)") c = i } END { print $c + 0 }' "$work/stat.csv")
read -r recorded rows open <<< "$(python3 - "$work/cdr.sqlite" <<'PY'
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
distinct = db.execute("SELECT COUNT(DISTINCT a_call_id) FROM cdrs").fetchone()[0]
rows = db.execute("SELECT COUNT(*) FROM cdrs").fetchone()[0]
still_open = db.execute("SELECT COUNT(*) FROM cdrs WHERE end_reason IS NULL").fetchone()[0]
print(distinct, rows, still_open)
PY
)"
recovered=$(grep -c "crash" "$work/warden.log" || true)
echo "     SIPp made $made calls ($answered completed); records: $recorded distinct calls in $rows records, $open open"
fail=0
[ "$made" -gt 0 ] && [ "$recorded" -eq "$made" ] && echo "ok   every call SIPp made has a record ($recorded = $made)" \
  || { echo "FAIL records $recorded != calls $made"; fail=1; }
[ "$open" -eq 0 ] && echo "ok   no record left open" || { echo "FAIL $open records open"; fail=1; }
[ "$answered" -gt 0 ] && echo "ok   calls completed between the kills" || { echo "FAIL no call completed"; fail=1; }
[ $fail -eq 0 ] || tail -n 30 "$work/warden.log"
echo "crash: $([ $fail -eq 0 ] && echo "$kills kills, nothing lost" || echo 'failures above')"
exit $fail

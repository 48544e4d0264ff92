#!/usr/bin/env bash
# Flood test (issue 9): while a legitimate caller on 127.0.0.2 makes 200 calls through
# Warden to a SIPp UAS, a flooder on 127.0.0.3 sends 20,000 INVITEs (each followed by a
# malformed request) at the highest rate SIPp manages. Reports the legitimate calls' success
# rate, Warden's peak RSS and what the guard dropped; fails when Warden dies, fewer than 99%
# of the legitimate calls succeed, the peak RSS passes 256 MiB, or a legitimate call has no
# call record.
# Usage: tests/sipp/flood.sh [WARDEN_BINARY]   (default: target/release/warden)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin=${1:-$here/../../target/release/warden}
port=${WARDEN_PORT:-5190}
legit_calls=${LEGIT_CALLS:-200}
flood_invites=${FLOOD_INVITES:-20000}
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

source "$here/../lib/warden.sh"
# The callee's UAS on 127.0.0.1 is exempt; the caller and the flooder are metered.
WARDEN_EXTRA_TOML='[guard]
exempt = ["127.0.0.1/32"]' start_warden "$bin" "$port" "$work" warn
pid=$(cat "$work/warden.pid")
rss() { awk -v k="$1:" '$1 == k { print $2 }' "/proc/$pid/status"; }
rss_start=$(rss VmRSS)
# Datagrams the kernel dropped for a full receive buffer (all UDP sockets on the machine).
rcvbuf_errors() { awk '/^Udp:/ { if (!n) { for (i = 1; i <= NF; i++) if ($i == "RcvbufErrors") c = i; n = 1 } else print $c }' /proc/net/snmp; }
kernel_drops_start=$(rcvbuf_errors)

common=(-nostdin -timeout 120s -max_recv_loops 1000)
uas_port=$((port + 1))
(cd "$work" && sipp "${common[@]}" -i 127.0.0.1 -sn uas -p "$uas_port" -m "$legit_calls" > uas.log 2>&1) &
uas=$!
sleep 0.3
(cd "$work" && sipp "127.0.0.1:$port" "${common[@]}" -i 127.0.0.1 -sf "$here/register.xml" -s bob-legit \
  -key contact_port "$uas_port" -m 1 > register.log 2>&1)
(cd "$work" && sipp "127.0.0.1:$port" "${common[@]}" -i 127.0.0.2 -sn uac -s bob-legit -m "$legit_calls" \
  -r 20 -d 1000 -trace_screen > uac.log 2>&1) &
uac=$!
sleep 1
started=$(date +%s.%N)
(cd "$work" && sipp "127.0.0.1:$port" "${common[@]}" -i 127.0.0.3 -sf "$here/flood.xml" -m "$flood_invites" \
  -r 100000 -rp 1000 -l 100000 > flood.log 2>&1) || true
flood_s=$(echo "$(date +%s.%N) - $started" | bc)
kernel_drops=$(( $(rcvbuf_errors) - kernel_drops_start ))
wait "$uac" || true
wait "$uas" || true

fail=0
kill -0 "$pid" 2>/dev/null || { echo "FAIL flood: Warden died"; tail -n 30 "$work/warden.log"; exit 1; }
rss_peak=$(rss VmHWM)
metrics=$(curl -fsS "http://127.0.0.1:$((port + 1000))/metrics")
metric() { echo "$metrics" | awk -v m="$1" '$1 == m { print $2 }'; }
dropped_rate=$(metric 'warden_guard_dropped_total{reason="rate"}')
dropped_banned=$(metric 'warden_guard_dropped_total{reason="banned"}')
bans=$(metric 'warden_guard_bans_total{reason="flood"}')
malformed=$(echo "$metrics" | awk '$1 ~ /^warden_sip_malformed_total\{/ { n += $2 } END { print n + 0 }')
# SIPp's final screen: "Successful call | <periodic> | <cumulative>".
ok_calls=$(awk -F'|' '/Successful call/ { v = $3 } END { gsub(/ /, "", v); print v + 0 }' "$work/uac.log")
success=$(echo "scale=1; 100 * $ok_calls / $legit_calls" | bc)

# Stop Warden (it stores the last records), then count the legitimate calls' records.
kill -TERM "$pid"
for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
records=$(python3 - "$work" <<'PY'
import glob, sqlite3, sys
paths = glob.glob(sys.argv[1] + "/*.sqlite")
for path in paths:
    db = sqlite3.connect(path)
    if db.execute("SELECT count(*) FROM sqlite_master WHERE name = 'cdrs'").fetchone()[0]:
        print(db.execute("SELECT count(*) FROM cdrs WHERE callee = 'bob-legit' AND final_code = 200 AND ended_ms IS NOT NULL").fetchone()[0])
        break
else:
    print(0)
PY
)

echo "flood: $flood_invites INVITEs + $flood_invites malformed from 127.0.0.3 in ${flood_s}s; guard dropped ${dropped_rate:-0} for rate, ${dropped_banned:-0} while banned; flood bans ${bans:-0}; malformed read and refused: $malformed; dropped by the kernel (receive buffer full): $kernel_drops"
echo "flood: legitimate calls from 127.0.0.2: $ok_calls of $legit_calls succeeded (${success}%); records of answered calls: $records"
echo "flood: Warden RSS ${rss_start} kB at start, peak ${rss_peak} kB"
[ "$(echo "$success >= 99" | bc)" = 1 ] || { echo "FAIL flood: legitimate success rate ${success}%"; fail=1; }
[ "$rss_peak" -lt $((256 * 1024)) ] || { echo "FAIL flood: peak RSS ${rss_peak} kB"; fail=1; }
[ "$records" = "$ok_calls" ] || { echo "FAIL flood: $ok_calls answered calls but $records records"; fail=1; }
[ "${bans:-0}" -ge 1 ] || { echo "FAIL flood: the flooder was never banned"; fail=1; }
if [ $fail -ne 0 ]; then tail -n 30 "$work/warden.log"; tail -n 40 "$work/uac.log"; exit 1; fi
echo "ok   flood"

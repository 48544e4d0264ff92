#!/usr/bin/env bash
# CPU per call: SIPp UAC -> Warden -> SIPp UAS (registered) at a fixed rate, 1 s calls with
# SDP offered (media anchored, no RTP). Reads utime+stime of the Warden process from
# /proc/PID/stat before and after the load and prints microseconds of CPU per call, with
# the failed calls (a figure from a run with failures means nothing), and the INVITE->200
# response time percentiles. WARDEN_EXTRA_TOML adds configuration (benches/cluster.sh).
# Usage: benches/cpu_per_call.sh [WARDEN_BINARY] [RATE] [SECONDS]   (needs sipp)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin=${1:-$here/../target/release/warden}
rate=${2:-600}
secs=${3:-20}
port=5290
uas_port=6290
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT

source "$here/../tests/lib/warden.sh"
start_warden "$bin" "$port" "$work" warn
for _ in $(seq 1 100); do [ -s "$work/warden.pid" ] && break; sleep 0.1; done
pid=$(cat "$work/warden.pid")
common=(-i 127.0.0.1 -nostdin -timeout_error -max_recv_loops 10000 -max_sched_loops 10000)
calls=$((rate * secs))
(cd "$work" && sipp "${common[@]}" -sn uas -p "$uas_port" -m "$calls" -timeout $((secs + 30))s > uas.log 2>&1) &
uas=$!
sleep 0.3
(cd "$work" && sipp 127.0.0.1:$port "${common[@]}" -sf "$here/../tests/sipp/register.xml" -s cpu \
  -key contact_port "$uas_port" -m 1 > reg.log 2>&1)
ticks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
hz=$(getconf CLK_TCK)
before=$(ticks)
(cd "$work" && sipp 127.0.0.1:$port "${common[@]}" -sn uac -s cpu -r "$rate" -m "$calls" -l $((rate * 2)) \
  -d 1000 -timeout $((secs + 30))s -trace_stat -trace_rtt -rtt_freq 1 > uac.log 2>&1) || true
after=$(ticks)
wait $uas 2>/dev/null || true
stat=$(ls "$work"/*uac*_.csv | head -1)
col() { awk -F';' -v name="$1" 'NR==1{for(i=1;i<=NF;i++) if($i==name) c=i} END{print $c+0}' "$stat"; }
ok=$(col "SuccessfulCall(C)")
failed=$(col "FailedCall(C)")
us=$(( (after - before) * 1000000 / hz ))
# INVITE -> 200 response times (ms), from SIPp's rtt trace.
read -r p50 p99 < <(cat "$work"/*_rtt.csv 2>/dev/null | awk -F';' 'NR > 1 && $2 ~ /^[0-9.]+$/ {print $2}' | sort -n |
  awk '{v[NR] = $1} END {if (NR == 0) {print "- -"; exit}; printf "%.1f %.1f\n", v[int(NR * 0.5) + 0], v[int(NR * 0.99) + 0]}')
echo "rate $rate calls/s for $secs s: $ok calls, $failed failed; Warden CPU $((us / 1000)) ms, $(( us / (ok > 0 ? ok : 1) )) us per call; setup p50 $p50 ms, p99 $p99 ms"

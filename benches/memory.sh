#!/usr/bin/env bash
# Memory per concurrent call: SIPp UAC -> Warden -> SIPp UAS (registered), on loopback, with
# SDP offered (media anchored, no RTP) and a long hold, so that CALLS calls are up at once.
# Reports Warden's resident set (VmRSS from /proc/PID/status) idle after the registration,
# once every call is up, and 34 s later, when the INVITE transactions are over (RFC 6026
# keeps each for 64*T1 = 32 s after its 2xx, to absorb retransmissions), so the last figure
# is what an established call costs; then whether every call completed.
# Usage: benches/memory.sh [WARDEN_BINARY] [CALLS]   (default 4000 calls; needs sipp)
# MEMORY_RATE (default 400) calls/s while the calls are set up.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin=${1:-$here/../target/release/warden}
calls=${2:-4000}
rate=${MEMORY_RATE:-400}
port=5290
work=$(mktemp -d)
trap 'kill $(jobs -p) ${pid:-} 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT

# Each anchored call holds two port pairs: make sure the default range and the file limit fit.
need_fds=$((calls * 4 + 256))
if [ "$(ulimit -Hn)" != unlimited ] && [ "$(ulimit -Hn)" -lt "$need_fds" ]; then
  echo "memory.sh: $calls calls need $need_fds file descriptors; the hard limit is $(ulimit -Hn)" >&2
  exit 1
fi
ulimit -n "$need_fds"

source "$here/../tests/lib/warden.sh"
start_warden "$bin" "$port" "$work" warn
for _ in $(seq 1 100); do [ -s "$work/warden.pid" ] && break; sleep 0.1; done
pid=$(cat "$work/warden.pid")
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$pid/status"; }
sockets() { find "/proc/$pid/fd" -lname 'socket:*' 2>/dev/null | wc -l; }

common=(-i 127.0.0.1 -nostdin -timeout_error -max_recv_loops 10000 -max_sched_loops 10000)
setup_secs=$(( (calls + rate - 1) / rate ))
hold_ms=$(( (setup_secs + 50) * 1000 ))
(cd "$work" && sipp "${common[@]}" -sn uas -p 6700 -m "$calls" -timeout $((setup_secs + 90))s \
  > uas.log 2>&1) &
uas=$!
sleep 0.3
(cd "$work" && sipp "127.0.0.1:$port" "${common[@]}" -sf "$here/../tests/sipp/register.xml" \
  -s memory -key contact_port 6700 -m 1 > reg.log 2>&1)
sleep 1
idle_kb=$(rss_kb)
idle_sockets=$(sockets)

(cd "$work" && sipp "127.0.0.1:$port" "${common[@]}" -sn uac -s memory -r "$rate" -m "$calls" \
  -l "$calls" -d "$hold_ms" -timeout $((setup_secs + 90))s -trace_stat -fd 1 > uac.log 2>&1) &
uac=$!
# Every call is up once Warden holds two port pairs (four sockets) for each.
deadline=$((SECONDS + setup_secs + 10))
while [ $(( $(sockets) - idle_sockets )) -lt $((calls * 4)) ] && [ $SECONDS -lt $deadline ]; do
  sleep 0.5
done
sleep 2 # let the last calls' transactions settle
up_kb=$(rss_kb)
up_sockets=$(( $(sockets) - idle_sockets ))
sleep 34
settled_kb=$(rss_kb)
wait "$uac" || true
wait "$uas" || true
stat=$(ls "$work"/*uac*_.csv 2>/dev/null | head -1)
col() { awk -F';' -v name="$1" 'NR==1 {for (i = 1; i <= NF; i++) if ($i == name) c = i} END {print $c + 0}' "$stat"; }
ok=$(col 'SuccessfulCall(C)')
failed=$(col 'FailedCall(C)')

echo "calls up at once: $calls (relay sockets open: $up_sockets), then $ok completed, $failed failed"
echo "Warden RSS idle: $((idle_kb / 1024)) MiB; every call up: $((up_kb / 1024)) MiB; 34 s later: $((settled_kb / 1024)) MiB"
echo "RSS per concurrent call: $(( (up_kb - idle_kb) * 1024 / calls )) bytes with its INVITE transactions, $(( (settled_kb - idle_kb) * 1024 / calls )) bytes once they are over"

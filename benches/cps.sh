#!/usr/bin/env bash
# Calls per second through Warden: SIPp UAC -> Warden -> SIPp UAS (registered), on loopback.
# Raises the rate step by step until a call fails; reports the highest rate with no failed
# call and the INVITE->200 response-time percentiles there. The same rate SIPp-to-SIPp
# without Warden is measured in the same run as the baseline (the machine's limit).
# Usage: benches/cps.sh [WARDEN_BINARY] [RATES...]   (needs sipp: Debian's sip-tester)
# CPS_FSYNC_MS=0 runs Warden without journal fsync (to compare its cost).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin=${1:-$here/../target/release/warden}
shift || true
rates=("${@:-200 400 600 800 1000 1200 1500 2000}")
read -r -a rates <<< "${rates[*]}"
secs=${CPS_SECONDS:-10}
port=5190
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

source "$here/../tests/lib/warden.sh"
# CPS_FSYNC_MS sets cdr.fsync_interval_ms (default Warden's, 10; 0: no fsync).
WARDEN_EXTRA_TOML="${CPS_FSYNC_MS:+[cdr]
fsync_interval_ms = $CPS_FSYNC_MS}" start_warden "$bin" "$port" "$work" warn

common=(-i 127.0.0.1 -nostdin -timeout_error -max_recv_loops 10000 -max_sched_loops 10000)
percentiles() { # rtt csv files -> "p50 p95 p99" in ms
  cat "$@" 2>/dev/null | awk -F';' 'NR>1 && $2 ~ /^[0-9.]+$/ {print $2}' | sort -n |
    awk '{v[NR]=$1} END {if (NR==0) {print "- - -"; exit}; printf "%.1f %.1f %.1f\n", v[int(NR*0.5)+0], v[int(NR*0.95)+0], v[int(NR*0.99)+0]}'
}
run() { # label target-port uas-port rate -> prints "successful failed p50 p95 p99"
  local label=$1 target=$2 uport=$3 rate=$4 calls=$(( $4 * secs ))
  local d="$work/$label-$rate"; mkdir -p "$d"
  (cd "$d" && sipp "${common[@]}" -sn uas -p "$uport" -m "$calls" -timeout $((secs + 30))s > uas.log 2>&1) &
  local uas=$!
  sleep 0.3
  if [ "$label" = warden ]; then
    (cd "$d" && sipp 127.0.0.1:$port "${common[@]}" -sf "$here/../tests/sipp/register.xml" -s "bench$rate" -key contact_port "$uport" -m 1 > reg.log 2>&1)
  fi
  (cd "$d" && sipp 127.0.0.1:"$target" "${common[@]}" -sn uac -s "bench$rate" -r "$rate" -m "$calls" -l $((rate * 2)) \
      -d 1000 -timeout $((secs + 30))s -trace_rtt -rtt_freq 1 -trace_stat > uac.log 2>&1) || true
  wait $uas 2>/dev/null || true
  local stat; stat=$(ls "$d"/*uac*_.csv 2>/dev/null | head -1)
  local ok fail
  ok=$(awk -F';' 'NR==1{for(i=1;i<=NF;i++) if($i=="SuccessfulCall(C)") c=i} END{print $c+0}' "$stat")
  fail=$(awk -F';' 'NR==1{for(i=1;i<=NF;i++) if($i=="FailedCall(C)") c=i} END{print $c+0}' "$stat")
  echo "$ok $fail $(percentiles "$d"/*rtt.csv)"
}

best=0; best_line=""
printf "%-8s %-10s %-8s %-22s\n" rate successful failed "INVITE->200 p50/p95/p99 ms"
for rate in "${rates[@]}"; do
  read -r ok fail p50 p95 p99 <<< "$(run warden $port $((6000 + rate % 1000 + rate / 1000)) "$rate")"
  printf "%-8s %-10s %-8s %s/%s/%s\n" "$rate" "$ok" "$fail" "$p50" "$p95" "$p99"
  if [ "$fail" -eq 0 ] && [ "$ok" -eq $((rate * secs)) ]; then best=$rate; best_line="$p50/$p95/$p99"; else break; fi
done
echo "highest rate through Warden with no failed call: $best calls/s (p50/p95/p99 $best_line ms)"
if [ "$best" -gt 0 ]; then
  read -r ok fail p50 p95 p99 <<< "$(run direct 7100 7100 "$best")"
  echo "baseline SIPp->SIPp without Warden at $best calls/s: $ok ok, $fail failed, p50/p95/p99 $p50/$p95/$p99 ms"
fi

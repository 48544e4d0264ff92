#!/usr/bin/env bash
# Calls per second through Warden: SIPp UAC -> Warden -> SIPp UAS (registered), on loopback,
# 1 s calls with SDP offered (media anchored, no RTP). Raises the rate step by step until a
# call fails. For each step: calls, failed, INVITE->200 percentiles, Warden's CPU per call
# (utime+stime from /proc/PID/stat around the load), and, as the reference measured in the
# same run, the same SIPp scenario through Kamailio as a stateful proxy (tm, every request)
# with its CPU per call (all its processes). System calls per call are counted during the
# step itself by `perf stat -e raw_syscalls:sys_enter` on every Warden thread (a kernel
# counter: it does not slow Warden); without perf, by a separate pass at each rate with
# `strace -c -f` attached (ptrace slows a saturated thread enough to inflate the count
# with retransmissions); CPS_STRACE=0 skips both. Last, the highest rate SIPp-to-SIPp
# without anything between (the machine's limit).
# Usage: benches/cps.sh [WARDEN_BINARY] [RATES...]   (needs sipp; kamailio optional)
# CPS_SECONDS (default 10) per step; CPS_FSYNC_MS=0 runs Warden without journal fsync;
# CPS_SHARDS sets server.shards (default Warden's, 1). CPS_RTP=1: each call carries a
# second of G.711 (SIPp plays the first 35 packets of its g711a.pcap, benches/uac_rtp.xml, and
# the callee echoes it with -rtp_echo), relayed both ways by Warden; Kamailio does not
# relay media, so its column is then signalling only.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin=${1:-$here/../target/release/warden}
shift || true
rates=("${@:-200 400 600 800 1000 1200 1500 2000}")
read -r -a rates <<< "${rates[*]}"
secs=${CPS_SECONDS:-10}
port=5190
kam_port=5195
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; [ -n "${kam_pid:-}" ] && kill "$kam_pid" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$work"' EXIT

source "$here/../tests/lib/warden.sh"
# CPS_FSYNC_MS sets cdr.fsync_interval_ms (default Warden's, 10; 0: no fsync).
WARDEN_SHARDS="${CPS_SHARDS:-}" WARDEN_EXTRA_TOML="${CPS_FSYNC_MS:+[cdr]
fsync_interval_ms = $CPS_FSYNC_MS}" start_warden "$bin" "$port" "$work" warn
for _ in $(seq 1 100); do [ -s "$work/warden.pid" ] && break; sleep 0.1; done
warden_pid=$(cat "$work/warden.pid")

# Kamailio as a stateful proxy straight to the UAS of the step (its port in @UAS@).
kamailio_cfg() { # uas-port
  cat <<EOF
listen=udp:127.0.0.1:$kam_port
children=2
log_stderror=yes
debug=1
mpath="/usr/lib/x86_64-linux-gnu/kamailio/modules/"
loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "rr.so"
loadmodule "maxfwd.so"
loadmodule "pv.so"
loadmodule "siputils.so"
loadmodule "textops.so"
request_route {
    if (!mf_process_maxfwd_header("10")) { sl_send_reply("483", "Too Many Hops"); exit; }
    if (is_method("CANCEL")) { if (t_check_trans()) { t_relay(); } exit; }
    # SIPp's built-in caller sends ACK and BYE to us, without a Route: on to the callee.
    \$du = "sip:127.0.0.1:$1";
    t_relay();
}
EOF
}

common=(-i 127.0.0.1 -nostdin -timeout_error -max_recv_loops 10000 -max_sched_loops 10000)
uac=(-sn uac); uas=(-sn uas)
if [ "${CPS_RTP:-0}" = 1 ]; then
  pcap=/usr/share/sip-tester/g711a.pcap
  [ -r "$pcap" ] || { echo "CPS_RTP=1 needs $pcap (Debian's sip-tester)" >&2; exit 1; }
  editcap -r "$pcap" "$work/second.pcap" 1-35 # its first 35 packets: a second of speech
  sed "s|@PCAP@|$work/second.pcap|" "$here/uac_rtp.xml" > "$work/uac_rtp.xml"
  uac=(-sf "$work/uac_rtp.xml"); uas=(-sn uas -rtp_echo -mp 16000)
fi
ticks() { # pids -> their utime+stime
  local t=0
  for p in "$@"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0))); done
  echo "$t"
}
hz=$(getconf CLK_TCK)
percentiles() { # rtt csv files -> "p50 p99" in ms
  cat "$@" 2>/dev/null | awk -F';' 'NR>1 && $2 ~ /^[0-9.]+$/ {print $2}' | sort -n |
    awk '{v[NR]=$1} END {if (NR==0) {print "- -"; exit}; printf "%.1f %.1f\n", v[int(NR*0.5)+0], v[int(NR*0.99)+0]}'
}
# label target-port uas-port rate seconds [pids to meter...]
#   -> prints "successful failed p50 p99 cpu-us-per-call"
run() {
  local label=$1 target=$2 uport=$3 rate=$4 s=$5; shift 5
  local calls=$((rate * s)) d="$work/$label-$rate"
  mkdir -p "$d"
  (cd "$d" && sipp "${common[@]}" "${uas[@]}" -p "$uport" -m "$calls" -timeout $((s + 30))s > uas.log 2>&1) &
  local uas=$!
  sleep 0.3
  if [ "$label" = warden ] || [ "$label" = strace ]; then
    (cd "$d" && sipp 127.0.0.1:$port "${common[@]}" -sf "$here/../tests/sipp/register.xml" -s "bench$rate" -key contact_port "$uport" -m 1 > reg.log 2>&1)
  fi
  local before; before=$(ticks "$@")
  (cd "$d" && sipp 127.0.0.1:"$target" "${common[@]}" "${uac[@]}" -s "bench$rate" -r "$rate" -m "$calls" -l $((rate * 2)) \
      -d 1000 -timeout $((s + 30))s -trace_rtt -rtt_freq 1 -trace_stat > uac.log 2>&1) || true
  local after; after=$(ticks "$@")
  wait $uas 2>/dev/null || true
  local stat; stat=$(ls "$d"/*uac*_.csv 2>/dev/null | head -1)
  local ok fail
  ok=$(awk -F';' 'NR==1{for(i=1;i<=NF;i++) if($i=="SuccessfulCall(C)") c=i} END{print $c+0}' "$stat")
  fail=$(awk -F';' 'NR==1{for(i=1;i<=NF;i++) if($i=="FailedCall(C)") c=i} END{print $c+0}' "$stat")
  local us=$(( (after - before) * 1000000 / hz / (ok > 0 ? ok : 1) ))
  echo "$ok $fail $(percentiles "$d"/*rtt.csv) $us"
}

# System calls per call, counted by the kernel during a step (perf), when perf can.
counting=0
if [ "${CPS_STRACE:-1}" != 0 ] && command -v perf > /dev/null &&
  perf stat -e raw_syscalls:sys_enter -p "$warden_pid" -o /dev/null -- sleep 0.1 2> /dev/null; then
  counting=1
fi
# System calls per call: strace attached to every Warden thread for a short pass.
syscalls() { # rate -> syscalls per call, or "-"
  local rate=$1 s=3
  if [ "${CPS_STRACE:-1}" = 0 ] || ! command -v strace > /dev/null; then echo "-"; return; fi
  strace -c -f -p "$warden_pid" -o "$work/strace-$rate.txt" 2> /dev/null &
  local tracer=$!
  sleep 0.5
  read -r ok _ <<< "$(run strace "$port" $((6500 + rate % 1000 + rate / 1000)) "$rate" "$s")"
  kill -INT "$tracer" 2>/dev/null || true
  wait "$tracer" 2>/dev/null || true
  awk -v ok="$ok" '$NF == "total" {t = $(NF - 2)} END {if (ok > 0 && t > 0) printf "%.0f\n", t / ok; else print "-"}' "$work/strace-$rate.txt"
}

kam_pid=""
best=0; best_line=""
echo "Warden with server.shards = ${CPS_SHARDS:-1}"
printf "%-6s %-7s %-6s %-14s %-10s %-9s | %-7s %-6s %-14s %-10s %s\n" rate calls failed "setup p50/p99" "us/call" "sys/call" \
  kam-ok failed "setup p50/p99" "us/call" "Warden/Kamailio"
for rate in "${rates[@]}"; do
  uas_port=$((6000 + rate % 1000 + rate / 1000))
  if [ "$counting" = 1 ]; then
    perf stat -e raw_syscalls:sys_enter -p "$warden_pid" -x, -o "$work/perf-$rate.txt" &
    counter=$!
  fi
  read -r ok fail p50 p99 us <<< "$(run warden $port "$uas_port" "$rate" "$secs" "$warden_pid")"
  if [ "$counting" = 1 ]; then
    kill -INT "$counter"; wait "$counter" 2> /dev/null || true
    sys=$(awk -F, -v ok="$ok" '/raw_syscalls/ {if (ok > 0) printf "%.0f\n", $1 / ok}' "$work/perf-$rate.txt")
  else
    sys=$(syscalls "$rate")
  fi
  kam="- - - - -"; ratio="-"
  if command -v kamailio > /dev/null; then
    kamailio_cfg $((uas_port + 1)) > "$work/kam.cfg"
    kamailio -f "$work/kam.cfg" -DD -E > "$work/kam-$rate.log" 2>&1 &
    kam_pid=$!
    sleep 1
    pids=$(pgrep -f "kamailio -f $work/kam.cfg" | tr '\n' ' ')
    # shellcheck disable=SC2086
    read -r kok kfail kp50 kp99 kus <<< "$(run kamailio $kam_port $((uas_port + 1)) "$rate" "$secs" $pids)"
    kill "$kam_pid" 2>/dev/null; wait "$kam_pid" 2>/dev/null || true; kam_pid=""
    kam="$kok $kfail $kp50/$kp99 $kus"
    [ "$kus" -gt 0 ] && ratio=$(awk -v w="$us" -v k="$kus" 'BEGIN {printf "%.2f", w / k}')
  fi
  read -r kok kfail ksetup kus <<< "$kam"
  printf "%-6s %-7s %-6s %-14s %-10s %-9s | %-7s %-6s %-14s %-10s %s\n" "$rate" "$ok" "$fail" "$p50/$p99" "$us" "$sys" \
    "$kok" "$kfail" "$ksetup" "$kus" "$ratio"
  if [ "$fail" -eq 0 ] && [ "$ok" -eq $((rate * secs)) ]; then best=$rate; best_line="$p50/$p99"; else break; fi
done
echo "highest rate through Warden with no failed call: $best calls/s (setup p50/p99 $best_line ms)"
if [ "$best" -gt 0 ]; then
  read -r ok fail p50 p99 _ <<< "$(run direct 7100 7100 "$best" "$secs")"
  echo "baseline SIPp->SIPp without Warden at $best calls/s: $ok ok, $fail failed, setup p50/p99 $p50/$p99 ms"
fi

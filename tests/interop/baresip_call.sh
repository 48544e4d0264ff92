#!/usr/bin/env bash
# Interop: two baresip phones register to Warden, alice calls bob through it and plays a
# 1 kHz tone from a file, bob answers automatically and plays one back; each phone records
# what it hears (sndfile). Passes when the call is established and ended on both sides,
# both recordings hold the tone (sox: RMS above a floor, dominant frequency 1 kHz +/- 2%),
# and a loopback capture (tshark) shows every RTP packet went to or came from Warden's
# media ports, none phone to phone. CALLER_CODEC / CALLEE_CODEC (default PCMU for both) pick the one codec each
# phone may use; when they differ, Warden must transcode. CALLER_MEDIAENC / CALLEE_MEDIAENC
# (e.g. srtp-mand) make a phone encrypt its media, and WARDEN_SRTP sets Warden's media.srtp.
# PHONE_AUTH=1 makes Warden's registrar ask for digest credentials (alice and bob are its
# users, passwords alice-secret and bob-secret) and the phones answer with them.
# PHONE_TRANSPORT=tcp puts both phones on TCP, and alice dials bob's URI with
# ;transport=tcp as well (baresip 1.0 then repeats the parameter in the Request-URI).
# Usage: tests/interop/baresip_call.sh [WARDEN_BINARY]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin=${1:-$here/../../target/release/warden}
port=${WARDEN_PORT:-5094}
media_min=36000 media_max=36099
caller_codec=${CALLER_CODEC:-PCMU} callee_codec=${CALLEE_CODEC:-PCMU}
caller_enc=${CALLER_MEDIAENC:-} callee_enc=${CALLEE_MEDIAENC:-}
echo "     caller codec $caller_codec${caller_enc:+ ($caller_enc)}, callee codec $callee_codec${callee_enc:+ ($callee_enc)}"
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; [ -n "${KEEP:-}" ] || rm -rf "$work"' EXIT

source "$here/../lib/warden.sh"
source "$here/../lib/baresip.sh"
WARDEN_EXTRA_TOML="[media]
port_min = $media_min
port_max = $media_max
srtp = \"${WARDEN_SRTP:-mirror}\"
${PHONE_AUTH:+$(users_toml alice bob)}" start_warden "$bin" "$port" "$work" info

make_tones "$work"

bob=$(phone bob 5095 10000-10049 "$callee_codec" "$callee_enc")  # baresip also takes port+1 (TLS)
alice=$(phone alice 5098 10050-10099 "$caller_codec" "$caller_enc")
tshark -q -i lo -f "udp portrange 10000-10099" -w "$work/rtp.pcap" > "$work/tshark.log" 2>&1 &
tshark_pid=$!
sleep 2 # tshark needs a moment before it captures
baresip -f "$bob" -t 12 > "$work/bob.log" 2>&1 &
bob_pid=$!
sleep 2
baresip -f "$alice" -t 7 -e "/dial sip:bob@127.0.0.1:$port${PHONE_TRANSPORT:+;transport=$PHONE_TRANSPORT}" > "$work/alice.log" 2>&1 || true
wait $bob_pid || true
sleep 0.5
kill -INT $tshark_pid 2>/dev/null || true
wait $tshark_pid 2>/dev/null || true

fail=0
check() { # file pattern what
  if grep -qiE "$2" "$1"; then echo "ok   $3"; else echo "FAIL $3"; fail=1; fi
}
expect() { # condition-result what
  if [ "$1" = yes ]; then echo "ok   $2"; else echo "FAIL $2"; fail=1; fi
}
check "$work/bob.log" "200 OK|registered" "bob registered"
if [ -n "${PHONE_AUTH:-}" ]; then
  for who in alice bob; do
    check "$work/warden.log" "registered aor=$who" "warden: $who registered with digest credentials"
  done
fi
if [ "${PHONE_TRANSPORT:-}" = tcp ]; then
  check "$work/warden.log" "registered aor=bob contact=[^ ]*transport=tcp" "warden: bob registered over TCP"
  check "$work/alice.log" "connecting to .*;transport=tcp;transport=tcp" "alice dialled with the transport parameter twice"
fi
check "$work/alice.log" "Call established|established" "alice: call established"
check "$work/bob.log" "Call established|established" "bob: call answered and established"
check "$work/warden.log" "answered" "warden: call answered"
check "$work/warden.log" "call ended" "warden: call ended by BYE"
if [ "$caller_codec" != "$callee_codec" ]; then
  check "$work/warden.log" "legs share no codec: transcoding" "warden: transcoding between $caller_codec and $callee_codec"
  check "$work/alice.log" "Set audio encoder: ${caller_codec%%/*}" "alice sends ${caller_codec%%/*}"
  check "$work/bob.log" "Set audio decoder: ${callee_codec%%/*}" "bob receives ${callee_codec%%/*}"
fi
check "$work/warden.log" "media summary.*caller_rtp=[1-9][0-9]{2}.*callee_rtp=[1-9][0-9]{2}" "warden: per-leg RTP counted"

# The recordings: what each phone decoded from the network holds the other's tone.
recording "$bob" bob
recording "$alice" alice

# The capture: RTP between the phones' ports and Warden's media ports only.
fields() { tshark -r "$work/rtp.pcap" -T fields -e udp.srcport -e udp.dstport 2>/dev/null; }
total=$(fields | wc -l)
via_warden=$(fields | awk -v lo=$media_min -v hi=$media_max '($1>=lo && $1<=hi) || ($2>=lo && $2<=hi)' | wc -l)
direct=$(fields | awk '$1>=10000 && $1<=10099 && $2>=10000 && $2<=10099' | wc -l)
echo "     capture: $total packets at the phones' RTP ports, $via_warden via Warden's ports $media_min-$media_max, $direct phone to phone"
expect "$([ "$total" -gt 200 ] && [ "$via_warden" -eq "$total" ] && [ "$direct" -eq 0 ] && echo yes || echo no)" "all RTP went through Warden's media ports"

# SRTP: Warden keyed the encrypting phones' legs, and their packets carry SRTP's tag
# (PCMU: 172-byte RTP, 8 more of UDP; AES_CM_128_HMAC_SHA1_80 adds 10 bytes, _32 adds 4).
srtp_leg() { # ports-low ports-high side name
  local plain sealed
  check "$work/warden.log" "SRTP \(SDES\) on the leg.*side=$3" "warden: SRTP on the $4's leg"
  plain=$(tshark -r "$work/rtp.pcap" -T fields -e udp.srcport -e udp.dstport -e udp.length 2>/dev/null |
    awk -v lo="$1" -v hi="$2" '(($1>=lo && $1<=hi) || ($2>=lo && $2<=hi)) && $3 == 180' | wc -l)
  sealed=$(tshark -r "$work/rtp.pcap" -T fields -e udp.srcport -e udp.dstport -e udp.length 2>/dev/null |
    awk -v lo="$1" -v hi="$2" '(($1>=lo && $1<=hi) || ($2>=lo && $2<=hi)) && ($3 == 190 || $3 == 184)' | wc -l)
  echo "     $4's leg: $sealed SRTP-sized packets, $plain plain-sized"
  expect "$([ "$sealed" -gt 100 ] && [ "$plain" -eq 0 ] && echo yes || echo no)" "$4's media is SRTP, both ways"
}
[ -z "$caller_enc" ] || srtp_leg 10050 10099 A caller
[ -z "$callee_enc" ] || srtp_leg 10000 10049 B callee

if [ $fail -ne 0 ]; then
  for f in warden alice bob tshark; do echo "--- $f"; tail -n 25 "$work/$f.log"; done
fi
echo "baresip: $([ $fail -eq 0 ] && echo 'all checks passed' || echo 'failures above')"
exit $fail

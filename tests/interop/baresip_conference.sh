#!/usr/bin/env bash
# Interop: three baresip phones on three codecs (PCMU, PCMA, G.722) dial conference room
# 8123 of Warden's shipped dialplan, each playing a tone of its own (500, 1100, 1700 Hz)
# and recording what it decodes. Passes when Warden answered all three and each phone's
# recording, while all three are in, holds the other two tones and not its own (sox
# band-pass RMS: each other tone above a floor, its own under a tenth of the weaker).
# Usage: tests/interop/baresip_conference.sh [WARDEN_BINARY]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin=${1:-$here/../../target/release/warden}
port=${WARDEN_PORT:-5094}
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; [ -n "${KEEP:-}" ] || rm -rf "$work"' EXIT

source "$here/../lib/warden.sh"
source "$here/../lib/baresip.sh"
WARDEN_EXTRA_TOML="[media]
port_min = 36100
port_max = 36199" start_warden "$bin" "$port" "$work" info

names=(alice bob carol) codecs=(PCMU PCMA G722/16000/1) freqs=(500 1100 1700) phones=()
for i in 0 1 2; do
  rate=8000; [ "${codecs[$i]}" = G722/16000/1 ] && rate=16000
  dir=$(phone "${names[$i]}" $((5098 + 3 * i)) $((10000 + 50 * i))-$((10049 + 50 * i)) "${codecs[$i]}")
  sox -n -r $rate -c 1 -b 16 "$dir/tone.wav" synth 12 sine "${freqs[$i]}" vol 0.3
  sed -i "s|^audio_source .*|audio_source aufile,$dir/tone.wav|" "$dir/config"
  # Joining one second after the other; everyone is in from about 2.5 s on.
  (sleep "$i"; baresip -f "$dir" -t $((11 - i)) -e "/dial sip:8123@127.0.0.1:$port" > "$work/${names[$i]}.log" 2>&1 || true) &
  phones+=($!)
done
wait "${phones[@]}"

fail=0
expect() { if [ "$1" = yes ]; then echo "ok   $2"; else echo "FAIL $2"; fail=1; fi; }
band() { # wav freq: RMS amplitude within +/- 60 Hz of freq
  sox "$1" -n sinc "$(($2 - 60))-$(($2 + 60))" stat 2>&1 | awk '/RMS +amplitude/ {print $3}'
}
expect "$([ "$(grep -c 'joined the conference' "$work/warden.log")" -eq 3 ] && echo yes || echo no)" "warden: three joined room 8123"
for i in 0 1 2; do
  rec=$(ls "$work/${names[$i]}"/dump-*-dec.wav 2>/dev/null | head -1 || true)
  if [ -z "$rec" ]; then
    expect no "${names[$i]} recorded the conference (sndfile dump)"
    continue
  fi
  # Three seconds while all three talk: from 3.5 s after this phone dialled.
  sox "$rec" "$work/cut-$i.wav" trim $((3 - i)).5 3 remix -
  own=$(band "$work/cut-$i.wav" "${freqs[$i]}")
  others=()
  for j in 0 1 2; do [ "$j" = "$i" ] || others+=("$(band "$work/cut-$i.wav" "${freqs[$j]}")"); done
  echo "     ${names[$i]} (${codecs[$i]}) hears: own ${freqs[$i]} Hz RMS $own, others ${others[*]}"
  expect "$(awk -v a="${others[0]}" -v b="${others[1]}" 'BEGIN {print (a > 0.02 && b > 0.02) ? "yes" : "no"}')" "${names[$i]} hears both others"
  expect "$(awk -v o="$own" -v a="${others[0]}" -v b="${others[1]}" 'BEGIN {m = a < b ? a : b; print (o < m / 10) ? "yes" : "no"}')" "${names[$i]} does not hear itself"
done
grep -q "left the conference" "$work/warden.log" && echo "ok   warden: members left the room" || { echo "FAIL warden: members left the room"; fail=1; }

if [ $fail -ne 0 ]; then
  for f in warden alice bob carol; do echo "--- $f"; tail -n 25 "$work/$f.log"; done
fi
echo "baresip conference: $([ $fail -eq 0 ] && echo 'all checks passed' || echo 'failures above')"
exit $fail

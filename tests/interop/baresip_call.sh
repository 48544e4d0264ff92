#!/usr/bin/env bash
# Interop: two baresip phones register to Warden, alice calls bob through it, bob answers
# automatically, both start PCMU streams phone to phone, alice hangs up on exit.
# Passes when baresip saw the call established on both sides and Warden logged the call
# answered and ended. Usage: tests/interop/baresip_call.sh [WARDEN_BINARY]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin=${1:-$here/../../target/release/warden}
port=${WARDEN_PORT:-5094}
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; [ -n "${KEEP:-}" ] || rm -rf "$work"' EXIT

source "$here/../lib/warden.sh"
start_warden "$bin" "$port" "$work" info

# An 8 kHz 440 Hz tone each phone sends (ausine only runs at 48 kHz).
python3 - "$work/tone.wav" <<'PY'
import math, struct, sys, wave
with wave.open(sys.argv[1], "wb") as w:
    w.setnchannels(1); w.setsampwidth(2); w.setframerate(8000)
    w.writeframes(b"".join(struct.pack("<h", int(8000 * math.sin(2 * math.pi * 440 * i / 8000))) for i in range(8000 * 10)))
PY

phone() { # name sip-port
  local dir="$work/$1"
  mkdir -p "$dir"
  cat > "$dir/config" <<CFG
poll_method epoll
sip_listen 127.0.0.1:$2
module_path /usr/lib/baresip/modules
module g711.so
module aufile.so
audio_source aufile,$work/tone.wav
audio_alert aufile,/dev/null
module_app account.so
module_app menu.so
CFG
  echo "<sip:$1@127.0.0.1:$port;transport=udp>;regint=600;answermode=auto;audio_codecs=PCMU" > "$dir/accounts"
  echo "$dir"
}

bob=$(phone bob 5095)  # baresip also takes port+1 (TLS)
alice=$(phone alice 5098)
baresip -f "$bob" -t 12 > "$work/bob.log" 2>&1 &
bob_pid=$!
sleep 2
baresip -f "$alice" -t 7 -e "/dial sip:bob@127.0.0.1:$port" > "$work/alice.log" 2>&1 || true
wait $bob_pid || true
sleep 0.5

fail=0
check() { # file pattern what
  if grep -qiE "$2" "$1"; then echo "ok   $3"; else echo "FAIL $3"; fail=1; fi
}
check "$work/bob.log" "200 OK|registered" "bob registered"
check "$work/alice.log" "Call established|established" "alice: call established"
check "$work/bob.log" "Call established|established" "bob: call answered and established"
check "$work/warden.log" "answered" "warden: call answered"
check "$work/warden.log" "call ended" "warden: call ended by BYE"
# SDP passes through unchanged in this issue: both phones must have started PCMU streams
# toward each other. (baresip 1.0 cannot record what it plays; measuring the audio itself
# comes with media anchoring, when it flows through Warden.)
check "$work/alice.log" "Set audio encoder: PCMU" "alice: PCMU stream started"
check "$work/bob.log" "Set audio decoder: PCMU" "bob: PCMU stream started"
if [ $fail -ne 0 ]; then
  for f in warden alice bob; do echo "--- $f"; tail -n 25 "$work/$f.log"; done
fi
echo "baresip: $([ $fail -eq 0 ] && echo '7 passed, 0 failed' || echo 'failures above')"
exit $fail

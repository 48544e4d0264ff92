#!/usr/bin/env bash
# Rebuild every announcement in this folder from its text: espeak-ng speaks it (American
# English voice, 150 words/min), sox turns it into 16 kHz mono 16-bit WAV, normalised to
# -3 dBFS with 0.2 s of silence before and 0.3 s after. Needs Debian's espeak-ng and sox.
# Usage: prompts/make.sh   (writes prompts/*.wav next to this script)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

say() { # name text
  espeak-ng -v en-us -s 150 -w "$tmp/$1.wav" "$2"
  sox "$tmp/$1.wav" -r 16000 -c 1 -b 16 "$here/$1.wav" norm -3 pad 0.2 0.3
  printf '%-20s %5.2f s  %s\n' "$1.wav" "$(soxi -D "$here/$1.wav")" "$2"
}

say call_blocked "This call has been blocked. Goodbye."
say number_not_allowed "Calls to this number are not allowed from your line."
say suspected_fraud "This call was stopped because it looks like fraud. If you believe this is a mistake, please contact your operator."
say user_unavailable "The person you are calling is not available. Please try again later."
say busy "The person you are calling is busy. Please try again later."
say ivr_menu "Welcome. For sales, press 1. For support, press 2. To hear this menu again, press star."
say challenge_intro "To continue this call, please enter the following code on your keypad, then press the hash key."
# Digits are read one after another, so their silences are trimmed to 0.1 s before and
# 0.15 s after.
for d in 0:zero 1:one 2:two 3:three 4:four 5:five 6:six 7:seven 8:eight 9:nine; do
  name="digit_${d%%:*}"
  espeak-ng -v en-us -s 150 -w "$tmp/$name.wav" "${d#*:}"
  sox "$tmp/$name.wav" -r 16000 -c 1 -b 16 "$here/$name.wav" \
    silence 1 0.02 1% reverse silence 1 0.02 1% reverse norm -3 pad 0.1 0.15
  printf '%-20s %5.2f s  %s\n' "$name.wav" "$(soxi -D "$here/$name.wav")" "${d#*:}"
done

# Music on hold: a calm plucked arpeggio synthesised by sox (no recording, nothing to
# license), 8 s at -6 dBFS; Warden loops it for as long as the call is on hold.
notes=(C4 E4 G4 C5 G4 E4 A3 C4 E4 A4 E4 C4 F3 A3 C4 F4)
for i in "${!notes[@]}"; do
  sox -n -r 16000 -c 1 -b 16 "$tmp/note$(printf %02d "$i").wav" synth 0.5 pluck "${notes[$i]}" fade 0 0.5 0.1
done
sox "$tmp"/note*.wav "$here/hold_music.wav" norm -6
printf '%-20s %5.2f s  %s\n' "hold_music.wav" "$(soxi -D "$here/hold_music.wav")" "(music: plucked arpeggio, sox synth)"

# Conference chimes: two sine notes rising as a party joins a room, falling as one leaves
# (0.15 s each at -10 dBFS, with short fades so they do not click).
chime() { # name first second
  sox -n -r 16000 -c 1 -b 16 "$tmp/$1_a.wav" synth 0.15 sine "$2" fade 0.01 0.15 0.02
  sox -n -r 16000 -c 1 -b 16 "$tmp/$1_b.wav" synth 0.15 sine "$3" fade 0.01 0.15 0.02
  sox "$tmp/$1_a.wav" "$tmp/$1_b.wav" "$here/$1.wav" norm -10 pad 0.05 0.1
  printf '%-20s %5.2f s  %s\n' "$1.wav" "$(soxi -D "$here/$1.wav")" "(chime: $2 then $3 Hz, sox synth)"
}
chime conference_join 660 880
chime conference_leave 880 660

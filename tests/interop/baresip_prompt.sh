#!/usr/bin/env bash
# Interop: a baresip phone calls a user nobody registered, with announcements on
# (calls.announce_failures). Warden answers with 183 and early media playing its built-in
# "user unavailable" prompt, then 404. Passes when baresip got the 183 and the 404 and its
# recording of the early media holds speech: RMS over a floor for most of the prompt.
# With PROMPT_VIA=dialplan the prompt comes from a dialplan route instead: the number
# "closed" plays the prompt, then the rule rejects with 480.
# Usage: tests/interop/baresip_prompt.sh [WARDEN_BINARY]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin=${1:-$here/../../target/release/warden}
port=${WARDEN_PORT:-5094}
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; [ -n "${KEEP:-}" ] || rm -rf "$work"' EXIT

source "$here/../lib/warden.sh"
source "$here/../lib/baresip.sh"
if [ "${PROMPT_VIA:-}" = dialplan ]; then
  cat > "$work/plan.toml" <<'PLAN'
[[rule]]
name = "closed line"
when = { ruri_user = '^closed$' }
do = [{ play = "user_unavailable" }, { reject = 480, reason = "Closed" }]
PLAN
  extra="[dialplan]
file = \"$work/plan.toml\""
  callee=closed status=480 logged="rule=\"closed line\"|playing to the caller.*user_unavailable"
else
  extra="[calls]
announce_failures = true"
  callee=nobody status=404 logged="announcing before the failure.*user_unavailable"
fi
WARDEN_EXTRA_TOML="$extra" start_warden "$bin" "$port" "$work" info
make_tones "$work"
alice=$(phone alice 5098 10050-10099 PCMU)
baresip -f "$alice" -t 9 -e "/dial sip:$callee@127.0.0.1:$port" > "$work/alice.log" 2>&1 || true

fail=0
expect() { if [ "$1" = yes ]; then echo "ok   $2"; else echo "FAIL $2"; fail=1; fi; }
has() { grep -qiE "$2" "$1" && echo yes || echo no; }
expect "$(has "$work/alice.log" "183 Session Progress|Session Progress")" "alice got 183 Session Progress"
expect "$(has "$work/alice.log" "$status")" "alice got $status after the prompt"
expect "$(has "$work/warden.log" "$logged")" "warden played user_unavailable"
rec=$(ls "$alice"/dump-*-dec.wav 2>/dev/null | head -1 || true)
if [ -n "$rec" ]; then
  # The prompt is 5.1 s: measure 0.5-4.5 s, where it speaks.
  length=$(soxi -D "$rec")
  sox "$rec" "$work/cut.wav" trim 0.5 4
  rms=$(sox "$work/cut.wav" -n stat 2>&1 | awk '/RMS +amplitude/ {print $3}')
  echo "     recording: $length s, RMS $rms over 0.5-4.5 s"
  expect "$(awk -v l="$length" 'BEGIN {print (l >= 4.5) ? "yes" : "no"}')" "the recording lasts the prompt's length"
  expect "$(awk -v r="$rms" 'BEGIN {print (r > 0.02) ? "yes" : "no"}')" "the recording holds speech (RMS > 0.02)"
else
  expect no "alice recorded the early media"
fi
if [ $fail -ne 0 ]; then
  for f in warden alice; do echo "--- $f"; grep -v "audio=" "$work/$f.log" | tail -n 30; done
fi
echo "baresip prompt: $([ $fail -eq 0 ] && echo 'all checks passed' || echo 'failures above')"
exit $fail

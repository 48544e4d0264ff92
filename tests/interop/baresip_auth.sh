#!/usr/bin/env bash
# Interop: baresip phones answering the registrar's digest challenge (registrar.auth = true,
# the default challenge order MD5 then SHA-256). First alice and bob register with their
# passwords and call through Warden, audio both ways (baresip_call.sh with PHONE_AUTH).
# Then mallory, from another loopback address, registers with a wrong password: refused
# with 401, and banned once guard.auth_failures (1 here) is reached; the ban is listed by
# the admin API and her next REGISTER goes unanswered.
# Usage: tests/interop/baresip_auth.sh [WARDEN_BINARY]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin=${1:-$here/../../target/release/warden}
echo "-- alice and bob register with digest credentials and call"
[ -n "${SKIP_CALL:-}" ] || PHONE_AUTH=1 "$here/baresip_call.sh" "$bin"

echo "-- mallory's wrong password"
port=${WARDEN_PORT:-5094}
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; [ -n "${KEEP:-}" ] || rm -rf "$work"' EXIT
source "$here/../lib/warden.sh"
source "$here/../lib/baresip.sh"
WARDEN_EXTRA_TOML="$(users_toml mallory)
[guard]
auth_failures = 1
exempt = [\"127.0.0.1/32\"]" start_warden "$bin" "$port" "$work" info
make_tones "$work"
mallory=$(PHONE_AUTH=1 PHONE_PASSWORD=guessed PHONE_IP=127.0.0.3 phone mallory 5097 10100-10149 PCMU)
# Killed, not quit or terminated: either un-registers, and a banned phone waits 32 s for
# that answer.
timeout -s KILL 5 baresip -f "$mallory" > "$work/mallory.log" 2>&1 || true

fail=0
check() { # file pattern what
  if grep -qiE "$2" "$1"; then echo "ok   $3"; else echo "FAIL $3"; fail=1; fi
}
check "$work/warden.log" "authentication failed.*mallory.*wrong password" "warden: mallory refused (401), the wrong password logged"
check "$work/warden.log" "source banned.*127.0.0.3|127.0.0.3.*source banned" "warden: mallory's address banned"
bans=$(curl -s "http://127.0.0.1:$((port + 1000))/guard/bans" || true)
echo "     bans: $bans"
if echo "$bans" | grep -q "127.0.0.3"; then echo "ok   the admin API lists the ban"; else echo "FAIL the admin API lists the ban"; fail=1; fi
if grep -q "registered aor=mallory" "$work/warden.log"; then echo "FAIL mallory never registered"; fail=1; else echo "ok   mallory never registered"; fi
if [ $fail -ne 0 ]; then
  for f in warden mallory; do echo "--- $f"; tail -n 25 "$work/$f.log"; done
fi
echo "baresip auth: $([ $fail -eq 0 ] && echo 'all checks passed' || echo 'failures above')"
exit $fail

#!/usr/bin/env bash
# Interop: baresip_prompt.sh with the prompt played by a dialplan route (play, then reject
# 480) rather than by calls.announce_failures. Passes when baresip's recording of the early
# media holds speech over the prompt's length and the call ends with 480.
# Usage: tests/interop/baresip_dialplan_prompt.sh [WARDEN_BINARY]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
PROMPT_VIA=dialplan exec "$here/baresip_prompt.sh" "$@"

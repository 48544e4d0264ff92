#!/usr/bin/env bash
# Interop: the baresip call of baresip_call.sh with legs that share no codec: the caller
# may use only G.722, the callee only PCMA. Passes when the callee's recording holds the
# caller's 1 kHz tone (Warden transcoded it) and all RTP went through Warden.
# Usage: tests/interop/baresip_transcode.sh [WARDEN_BINARY]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
CALLER_CODEC=G722/16000/1 CALLEE_CODEC=PCMA exec "$here/baresip_call.sh" "$@"

#!/usr/bin/env bash
# Interop: the baresip call of baresip_call.sh with SRTP (SDES keys, baresip's own SRTP
# stack). First the caller encrypts (srtp-mand) and Warden's route to the callee is plain
# (media.srtp = "off"): Warden bridges SRTP to RTP. Then both phones encrypt, each with
# keys of its own leg (media.srtp = "mirror"). Each passes when both recordings hold the
# other phone's 1 kHz tone and the encrypting phones' packets are SRTP.
# Usage: tests/interop/baresip_srtp.sh [WARDEN_BINARY]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
echo "-- SRTP caller, plain RTP callee"
CALLER_MEDIAENC=srtp-mand WARDEN_SRTP=off "$here/baresip_call.sh" "$@"
echo "-- SRTP on both legs"
CALLER_MEDIAENC=srtp-mand CALLEE_MEDIAENC=srtp-mand WARDEN_SRTP=mirror "$here/baresip_call.sh" "$@"

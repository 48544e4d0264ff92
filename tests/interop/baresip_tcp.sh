#!/usr/bin/env bash
# Interop: the baresip call of baresip_call.sh over TCP. Both phones register over TCP and
# alice dials sip:bob@...;transport=tcp, so baresip 1.0 sends a Request-URI ending in
# ;transport=tcp;transport=tcp, which Warden accepts (the copy says nothing more). Passes
# when the call is established and hung up and both recordings hold the other's tone.
# Usage: tests/interop/baresip_tcp.sh [WARDEN_BINARY]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
PHONE_TRANSPORT=tcp "$here/baresip_call.sh" "$@"

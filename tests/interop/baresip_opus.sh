#!/usr/bin/env bash
# Interop: the baresip call of baresip_call.sh between an Opus-only caller and a PCMA-only
# callee. Passes when each recording holds the other's 1 kHz tone (Warden transcoded Opus
# to PCMA and back) and all RTP went through Warden. Needs a Warden built with Opus
# (`cargo build --release --features native-codecs`).
# Usage: tests/interop/baresip_opus.sh [WARDEN_BINARY]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin=${1:-$here/../../target/release/warden}
if ! "$bin" codecs | grep -q '^opus '; then
  echo "FAIL $bin has no Opus: build it with --features native-codecs (needs libopus-dev, pkg-config)"
  exit 1
fi
CALLER_CODEC=opus/48000/2 CALLEE_CODEC=PCMA exec "$here/baresip_call.sh" "$bin"

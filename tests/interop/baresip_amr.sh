#!/usr/bin/env bash
# Interop: the baresip call of baresip_call.sh with a callee that has only baresip's amr
# module, which speaks AMR and AMR-WB in octet-aligned mode only, and a caller that speaks
# only PCMU. Warden must offer the octet-aligned layout (beside bandwidth-efficient) and
# transcode; passes when each phone's recording holds the other's 1 kHz tone, once with
# AMR-NB and once with AMR-WB. Needs a Warden built with the amr feature.
# Usage: tests/interop/baresip_amr.sh [WARDEN_BINARY]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
fail=0
for codec in AMR AMR-WB/16000; do
  CALLER_CODEC=PCMU CALLEE_CODEC=$codec "$here/baresip_call.sh" "$@" || fail=1
done
exit $fail

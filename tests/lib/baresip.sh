# Shared by the baresip interop scripts (source it after setting $work and $port).
# make_tones DIR: 10 s 1 kHz tones at 8 and 16 kHz mono, and 48 kHz stereo for Opus (aufile
# insists on the codec's rate and channel count, and baresip's Opus is opus/48000/2).
# phone NAME SIP-PORT RTP-PORTS CODEC [MEDIAENC]: a baresip config folder in $work/NAME for
# one phone registered to Warden at 127.0.0.1:$port, answering automatically, playing the
# tone, recording what it decodes (sndfile, into its folder), allowed only CODEC (an AMR
# phone loads no other codec module); MEDIAENC
# (e.g. srtp-mand: SDES keys, RTP/SAVP) encrypts its media. With PHONE_AUTH set, the phone
# answers digest challenges with the password NAME-secret (or $PHONE_PASSWORD); PHONE_IP
# (default 127.0.0.1) is the address it sends from; PHONE_TRANSPORT (default udp) the
# transport its account names.
tone_of() { case $1 in */16000*) echo 16000 ;; opus*) echo 48000-stereo ;; *) echo 8000 ;; esac; }

# The codec modules a phone allowed CODEC loads: an AMR phone has baresip's amr module only
# (octet-aligned AMR and AMR-WB, nothing else to fall back on).
codec_modules() {
  case $1 in
    AMR*) echo "module amr.so" ;;
    *) printf 'module g711.so\nmodule g722.so\nmodule opus.so\n' ;;
  esac
}

make_tones() {
  local r
  for r in 8000 16000; do
    sox -n -r $r -c 1 -b 16 "$1/tone-$r.wav" synth 10 sine 1000 vol 0.5
  done
  sox -n -r 48000 -c 2 -b 16 "$1/tone-48000-stereo.wav" synth 10 sine 1000 vol 0.5
}

phone() {
  local dir="$work/$1"
  mkdir -p "$dir"
  cat > "$dir/config" <<CFG
poll_method epoll
sip_listen ${PHONE_IP:-127.0.0.1}:$2
rtp_ports $3
module_path /usr/lib/baresip/modules
$(codec_modules "$4")
module aufile.so
module sndfile.so
module srtp.so
snd_path $dir
audio_source aufile,$work/tone-$(tone_of "$4").wav
audio_alert aufile,/dev/null
module_app account.so
module_app menu.so
CFG
  echo "<sip:$1@127.0.0.1:$port;transport=${PHONE_TRANSPORT:-udp}>;regint=600;answermode=auto;audio_codecs=$4${5:+;mediaenc=$5}${PHONE_AUTH:+;auth_pass=${PHONE_PASSWORD:-$1-secret}}" > "$dir/accounts"
  echo "$dir"
}

# users_toml NAME...: a [registrar] table asking for digest credentials, with each NAME a
# user whose password is NAME-secret (what `phone` answers with under PHONE_AUTH).
users_toml() {
  local name
  printf "[registrar]\nauth = true\n${DIGEST_ALGORITHMS:+digest_algorithms = $DIGEST_ALGORITHMS\n}"
  for name in "$@"; do
    printf '[[registrar.users]]\nusername = "%s"\npassword = "%s-secret"\n' "$name" "$name"
  done
}

# recording PHONE-DIR NAME: what the phone decoded from the network (its sndfile dump) holds
# the other side's 1 kHz tone; reports through the caller's `expect`.
recording() { # phone-dir name
  local rec rms freq
  rec=$(ls "$1"/dump-*-dec.wav 2>/dev/null | head -1 || true)
  if [ -z "$rec" ]; then
    expect no "$2 recorded the call (sndfile dump)"
    return
  fi
  # Skip the first second (ringing, jitter buffer start), analyse 3 s.
  sox "$rec" "$work/cut-$2.wav" trim 1 3 remix - # stereo (Opus) mixed to mono
  rms=$(sox "$work/cut-$2.wav" -n stat 2>&1 | awk '/RMS +amplitude/ {print $3}')
  # Dominant frequency: the strongest bin of sox's power spectrum (about 2 Hz bins).
  freq=$(sox "$work/cut-$2.wav" -n stat -freq 2>&1 | awk 'NF == 2 && $1 + 0 > 0 && $2 + 0 > max { max = $2 + 0; f = $1 } END { print f }')
  echo "     $2's recording: RMS $rms, dominant frequency $freq Hz"
  expect "$(awk -v r="$rms" 'BEGIN {print (r > 0.05) ? "yes" : "no"}')" "$2's recording is not silence (RMS > 0.05)"
  expect "$(awk -v f="$freq" 'BEGIN {print (f >= 980 && f <= 1020) ? "yes" : "no"}')" "$2's recording is the 1 kHz tone (+/- 2%)"
}

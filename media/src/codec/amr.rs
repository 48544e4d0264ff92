//! AMR-NB (8 kHz) and AMR-WB (16 kHz) through a thin FFI of ours to the system's
//! libopencore-amrnb (both directions), libopencore-amrwb (decoder) and libvo-amrwbenc
//! (encoder). No maintained binding crate exists; the pure-Rust codec measured 4-5x
//! slower. RTP framing (RFC 4867) is `amr_payload`; lost frames use the codecs' own
//! concealment (a frame marked bad).

use std::os::raw::{c_int, c_short, c_uchar, c_void};

use super::amr_mode::ModeControl;
use super::amr_payload::{Frame, Layout, NO_DATA};
use super::{CodecOptions, Decoder, Encoder, FormatParams};

#[link(name = "opencore-amrnb")]
unsafe extern "C" {
    fn Encoder_Interface_init(dtx: c_int) -> *mut c_void;
    fn Encoder_Interface_exit(state: *mut c_void);
    fn Encoder_Interface_Encode(
        state: *mut c_void,
        mode: c_int,
        speech: *const c_short,
        out: *mut c_uchar,
        force_speech: c_int,
    ) -> c_int;
    fn Decoder_Interface_init() -> *mut c_void;
    fn Decoder_Interface_exit(state: *mut c_void);
    fn Decoder_Interface_Decode(
        state: *mut c_void,
        input: *const c_uchar,
        out: *mut c_short,
        bfi: c_int,
    );
}

#[link(name = "opencore-amrwb")]
unsafe extern "C" {
    fn D_IF_init() -> *mut c_void;
    fn D_IF_decode(state: *mut c_void, bits: *const c_uchar, synth: *mut c_short, bfi: c_int);
    fn D_IF_exit(state: *mut c_void);
}

#[link(name = "vo-amrwbenc")]
unsafe extern "C" {
    fn E_IF_init() -> *mut c_void;
    fn E_IF_encode(
        state: *mut c_void,
        mode: c_int,
        speech: *const c_short,
        out: *mut c_uchar,
        dtx: c_int,
    ) -> c_int;
    fn E_IF_exit(state: *mut c_void);
}

/// The largest storage-format frame: one header octet and 477 bits of AMR-WB 23.85.
const MAX_STORAGE: usize = 1 + 60;
/// Highest speech mode: 12.2 kbps (NB, 7) and 23.85 kbps (WB, 8).
const NB_TOP_MODE: u8 = 7;
const WB_TOP_MODE: u8 = 8;

pub struct AmrEncoder {
    state: *mut c_void,
    layout: Layout,
    mode: ModeControl,
    pcm: Vec<i16>,
    storage: [u8; MAX_STORAGE],
}

// SAFETY: the codec state is owned by this value alone and only used through `&mut self`;
// the libraries keep no thread-local or global state per encoder.
unsafe impl Send for AmrEncoder {}

impl AmrEncoder {
    pub fn new(wideband: bool, _options: &CodecOptions, params: &FormatParams) -> AmrEncoder {
        // SAFETY: the init functions take plain values and return an owned state or null.
        let state = unsafe {
            if wideband {
                E_IF_init()
            } else {
                Encoder_Interface_init(0)
            }
        };
        let top = if wideband { WB_TOP_MODE } else { NB_TOP_MODE };
        AmrEncoder {
            state,
            layout: Layout {
                wideband,
                octet_aligned: params.octet_aligned,
            },
            mode: ModeControl::new(top, params),
            pcm: Vec::with_capacity(320),
            storage: [0; MAX_STORAGE],
        }
    }

    fn samples(&self) -> usize {
        if self.layout.wideband { 320 } else { 160 }
    }
}

impl Encoder for AmrEncoder {
    /// One 20 ms frame per `samples()` of `pcm` (a 40 or 60 ms ptime gives several), all
    /// in one payload.
    fn encode(&mut self, pcm: &[i16], out: &mut Vec<u8>) {
        if self.state.is_null() {
            return;
        }
        let frames: Vec<Frame> = pcm
            .chunks(self.samples())
            .filter_map(|chunk| self.encode_frame(chunk))
            .collect();
        self.layout.build_frames(NO_DATA, &frames, out);
    }

    fn request_mode(&mut self, mode: u8) {
        self.mode.request(mode);
    }
}

impl AmrEncoder {
    fn encode_frame(&mut self, pcm: &[i16]) -> Option<Frame> {
        // The libraries read exactly one frame: pad to its length.
        self.pcm.clear();
        self.pcm
            .extend_from_slice(&pcm[..pcm.len().min(self.samples())]);
        self.pcm.resize(self.samples(), 0);
        let mode = c_int::from(self.mode.next_frame());
        // SAFETY: `state` is a live encoder of the right kind; `pcm` holds one frame of
        // samples; `storage` has room for the largest frame the library writes.
        let written = unsafe {
            if self.layout.wideband {
                E_IF_encode(
                    self.state,
                    mode,
                    self.pcm.as_ptr(),
                    self.storage.as_mut_ptr(),
                    0,
                )
            } else {
                Encoder_Interface_Encode(
                    self.state,
                    mode,
                    self.pcm.as_ptr(),
                    self.storage.as_mut_ptr(),
                    0,
                )
            }
        };
        let written = usize::try_from(written).unwrap_or(0).min(MAX_STORAGE);
        Frame::from_storage(&self.storage[..written])
    }
}

impl Drop for AmrEncoder {
    fn drop(&mut self) {
        if self.state.is_null() {
            return;
        }
        // SAFETY: `state` came from the matching init and is freed once, here.
        unsafe {
            if self.layout.wideband {
                E_IF_exit(self.state)
            } else {
                Encoder_Interface_exit(self.state)
            }
        }
    }
}

pub struct AmrDecoder {
    state: *mut c_void,
    layout: Layout,
    storage: Vec<u8>,
    pcm: [i16; 320],
    /// Frame type of the last good frame, to conceal a lost one in kind.
    last_type: u8,
    /// The last codec mode request (CMR) the sender made.
    requested: Option<u8>,
}

// SAFETY: as for the encoder: the state belongs to this value and is used via `&mut self`.
unsafe impl Send for AmrDecoder {}

impl AmrDecoder {
    pub fn new(wideband: bool, params: &FormatParams) -> AmrDecoder {
        // SAFETY: the init functions take nothing and return an owned state or null.
        let state = unsafe {
            if wideband {
                D_IF_init()
            } else {
                Decoder_Interface_init()
            }
        };
        AmrDecoder {
            state,
            layout: Layout {
                wideband,
                octet_aligned: params.octet_aligned,
            },
            storage: Vec::with_capacity(MAX_STORAGE),
            pcm: [0; 320],
            last_type: if wideband { WB_TOP_MODE } else { NB_TOP_MODE },
            requested: None,
        }
    }

    fn samples(&self) -> usize {
        if self.layout.wideband { 320 } else { 160 }
    }

    /// Run the library on `self.storage` (one storage-format frame); `bad` asks it to
    /// conceal instead.
    fn run(&mut self, bad: bool, out: &mut Vec<i16>) {
        if self.state.is_null() {
            return;
        }
        // The library reads as many speech bytes as the header's frame type says: make
        // sure they are there whatever the payload held.
        self.storage.resize(MAX_STORAGE, 0);
        // SAFETY: `state` is a live decoder of the right kind; `storage` holds a header
        // and at least the largest frame's bytes; `pcm` has room for one frame (320).
        unsafe {
            if self.layout.wideband {
                D_IF_decode(
                    self.state,
                    self.storage.as_ptr(),
                    self.pcm.as_mut_ptr(),
                    c_int::from(bad),
                );
            } else {
                Decoder_Interface_Decode(
                    self.state,
                    self.storage.as_ptr(),
                    self.pcm.as_mut_ptr(),
                    c_int::from(bad),
                );
            }
        }
        out.extend_from_slice(&self.pcm[..self.samples()]);
    }
}

impl Decoder for AmrDecoder {
    fn decode(&mut self, payload: &[u8], out: &mut Vec<i16>) {
        let Ok((cmr, frames)) = self.layout.parse(payload) else {
            // A damaged payload: conceal one frame so the stream keeps its timing.
            return self.conceal(self.samples(), out);
        };
        if cmr != NO_DATA {
            self.requested = Some(cmr);
        }
        for frame in frames {
            if frame.frame_type == NO_DATA {
                continue; // nothing sent for this slot (DTX)
            }
            self.storage.clear();
            frame.to_storage(&mut self.storage);
            if frame.good && self.layout.bits(frame.frame_type).is_some_and(|b| b > 40) {
                self.last_type = frame.frame_type;
            }
            self.run(!frame.good, out);
        }
    }

    fn mode_request(&self) -> Option<u8> {
        self.requested
    }

    fn conceal(&mut self, samples: usize, out: &mut Vec<i16>) {
        for _ in 0..samples.div_ceil(self.samples()) {
            self.storage.clear();
            self.storage.push(self.last_type << 3);
            self.run(true, out);
        }
    }
}

impl Drop for AmrDecoder {
    fn drop(&mut self) {
        if self.state.is_null() {
            return;
        }
        // SAFETY: `state` came from the matching init and is freed once, here.
        unsafe {
            if self.layout.wideband {
                D_IF_exit(self.state)
            } else {
                Decoder_Interface_exit(self.state)
            }
        }
    }
}

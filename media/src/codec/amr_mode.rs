//! Which AMR mode Warden's encoder sends a party (RFC 4867 4.3.1 and 8.1): the highest its
//! `mode-set` allows, lowered and raised again as its codec mode requests (CMR) ask, and
//! changed only where `mode-change-period` and `mode-change-neighbor` allow. Pure state.

use super::FormatParams;
use super::amr_payload::NO_DATA;

#[derive(Debug, Clone)]
pub struct ModeControl {
    /// The modes the party accepts, lowest first (its mode-set, or every speech mode).
    allowed: Vec<u8>,
    current: u8,
    target: u8,
    /// Changes only on frames whose count is a multiple of this (1 or 2).
    period: u32,
    /// Changes only to the next allowed mode up or down.
    neighbor: bool,
    frames: u32,
}

impl ModeControl {
    /// For a codec whose highest speech mode is `top` (AMR 7, AMR-WB 8), toward a party
    /// whose format is `params`.
    pub fn new(top: u8, params: &FormatParams) -> ModeControl {
        let mut allowed: Vec<u8> = (0..=top)
            .filter(|m| params.mode_set == 0 || params.mode_set & (1 << m) != 0)
            .collect();
        if allowed.is_empty() {
            allowed.push(top); // a mode-set of nothing this codec has: its usual mode
        }
        let highest = allowed[allowed.len() - 1];
        ModeControl {
            allowed,
            current: highest,
            target: highest,
            period: u32::from(params.mode_change_period.max(1)),
            neighbor: params.mode_change_neighbor,
            frames: 0,
        }
    }

    /// The party asks for `cmr` (a mode number; 15: no request, which changes nothing):
    /// the highest allowed mode not above it, or the lowest allowed when all are.
    pub fn request(&mut self, cmr: u8) {
        if cmr == NO_DATA {
            return;
        }
        self.target = self
            .allowed
            .iter()
            .rev()
            .find(|m| **m <= cmr)
            .copied()
            .unwrap_or(self.allowed[0]);
    }

    /// The mode of the next frame.
    pub fn next_frame(&mut self) -> u8 {
        if self.current != self.target && self.frames.is_multiple_of(self.period) {
            self.current = if self.neighbor {
                let at = self.allowed.iter().position(|m| *m == self.current);
                let step = |i: usize| {
                    if self.target > self.current {
                        self.allowed.get(i + 1)
                    } else {
                        i.checked_sub(1).and_then(|j| self.allowed.get(j))
                    }
                };
                at.and_then(step).copied().unwrap_or(self.target)
            } else {
                self.target
            };
        }
        self.frames = self.frames.wrapping_add(1);
        self.current
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn modes(control: &mut ModeControl, frames: usize) -> Vec<u8> {
        (0..frames).map(|_| control.next_frame()).collect()
    }

    #[test]
    fn the_highest_mode_of_the_set_until_a_request_lowers_it() {
        let params = FormatParams::parse("mode-set=0,2,5,7");
        let mut c = ModeControl::new(7, &params);
        assert_eq!(modes(&mut c, 2), [7, 7]);
        c.request(4); // not in the set: the highest allowed below it
        assert_eq!(modes(&mut c, 2), [2, 2]);
        c.request(NO_DATA); // no request: stays
        assert_eq!(modes(&mut c, 1), [2]);
        c.request(7);
        assert_eq!(modes(&mut c, 1), [7]);
        c.request(0);
        assert_eq!(modes(&mut c, 1), [0]);
        // No mode-set: every speech mode; a request below all of them gets the lowest.
        let mut any = ModeControl::new(8, &FormatParams::default());
        any.request(3);
        assert_eq!(modes(&mut any, 1), [3]);
    }

    #[test]
    fn changes_keep_to_the_period_and_to_neighbouring_modes() {
        let params =
            FormatParams::parse("mode-set=0,1,2,3;mode-change-period=2;mode-change-neighbor=1");
        let mut c = ModeControl::new(8, &params);
        assert_eq!(modes(&mut c, 1), [3], "frame 0");
        c.request(0);
        // Frame 1 may not change; 2, 4, 6 may, one neighbour at a time.
        assert_eq!(modes(&mut c, 7), [3, 2, 2, 1, 1, 0, 0]);
        c.request(8); // frame 8 may change: up again, one neighbour per two frames
        assert_eq!(modes(&mut c, 7), [1, 1, 2, 2, 3, 3, 3]);
    }
}

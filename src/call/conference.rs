//! Conference rooms as signalling sees them: which calls are in which named room, and the
//! number the media relay mixes each room under. The mixing itself is the relay's.

use std::collections::HashMap;

use warden_media::codec::{Codec, FormatParams};
use warden_media::{Side as MediaSide, StreamId};

/// A call in a room: the side of its relay stream facing the party in the room (the
/// caller's, unless a transfer put the callee there) and the codec the party hears.
#[derive(Debug, Clone, Copy)]
pub struct Member {
    pub call: u64,
    pub stream: StreamId,
    pub side: MediaSide,
    pub codec: &'static Codec,
    /// The codec's payload format as the party's SDP gave it (AMR's layout and modes).
    pub params: FormatParams,
    pub payload_type: u8,
}

#[derive(Debug)]
struct Room {
    number: u64,
    members: Vec<Member>,
}

/// Every room with members; a room begins with its first member and ends with its last.
#[derive(Debug, Default)]
pub struct Rooms {
    rooms: HashMap<String, Room>,
    next_number: u64,
}

impl Rooms {
    /// Add `member` to room `name`: the room's relay number.
    pub fn join(&mut self, name: &str, member: Member) -> u64 {
        let next = &mut self.next_number;
        let room = self.rooms.entry(name.to_owned()).or_insert_with(|| {
            *next += 1;
            Room {
                number: *next,
                members: Vec::new(),
            }
        });
        room.members.retain(|m| m.call != member.call);
        room.members.push(member);
        room.number
    }

    /// Take `call` out of room `name`: the members left (none when the room ended).
    pub fn leave(&mut self, name: &str, call: u64) -> Vec<Member> {
        let Some(room) = self.rooms.get_mut(name) else {
            return Vec::new();
        };
        room.members.retain(|m| m.call != call);
        let left = room.members.clone();
        if left.is_empty() {
            self.rooms.remove(name);
        }
        left
    }

    /// The members of room `name` now.
    pub fn members(&self, name: &str) -> &[Member] {
        self.rooms.get(name).map_or(&[], |r| &r.members)
    }

    /// Rooms with members, and the members in them all.
    pub fn counts(&self) -> (usize, usize) {
        let members = self.rooms.values().map(|r| r.members.len()).sum();
        (self.rooms.len(), members)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(call: u64) -> Member {
        Member {
            call,
            stream: StreamId(call),
            side: MediaSide::A,
            codec: warden_media::codec::by_name("PCMA", 8000).expect("pcma"),
            params: FormatParams::default(),
            payload_type: 8,
        }
    }

    #[test]
    fn a_room_lives_from_its_first_member_to_its_last() {
        let mut rooms = Rooms::default();
        let n = rooms.join("sales", member(1));
        assert_eq!(rooms.join("sales", member(2)), n, "same room, same number");
        assert_ne!(rooms.join("support", member(3)), n);
        assert_eq!(rooms.counts(), (2, 3));
        assert_eq!(rooms.leave("sales", 1).len(), 1);
        assert!(
            rooms.leave("sales", 2).is_empty(),
            "the last one out ends it"
        );
        assert_eq!(rooms.counts(), (1, 1));
        assert_ne!(
            rooms.join("sales", member(4)),
            n,
            "a new room, a new number"
        );
    }
}

//! How much room a session (Redis or memcached) makes in its client read buffer before each read.

use bytes::BytesMut;

/// Room for the next client read: little while the client sends little, so that an idle
/// session holds little memory, and doubling while reads fill the room, so that deep pipelines
/// and big values still arrive in large chunks. An empty buffer grown far beyond the current
/// size is given back.
pub struct ReadRoom {
    size: usize,
    /// Spare capacity before the pending read.
    room: usize,
}

impl ReadRoom {
    const MIN: usize = 512;
    const MAX: usize = 64 * 1024;

    pub fn new() -> Self {
        Self {
            size: Self::MIN,
            room: 0,
        }
    }

    /// Makes room in `buf` for the next read.
    pub fn prepare(&mut self, buf: &mut BytesMut) {
        if buf.is_empty() && buf.capacity() > 4 * self.size {
            *buf = BytesMut::new();
        }
        buf.reserve(self.size);
        self.room = buf.capacity() - buf.len();
    }

    /// Adapts the size to what a read brought.
    pub fn record(&mut self, read: usize) {
        if read >= self.room {
            self.size = (self.size * 2).min(Self::MAX);
        } else if read < self.size / 4 {
            self.size = (self.size / 2).max(Self::MIN);
        }
    }
}

impl Default for ReadRoom {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_room_grows_with_full_reads_and_gives_memory_back_when_idle() {
        let mut room = ReadRoom::new();
        let mut buf = BytesMut::new();
        room.prepare(&mut buf);
        assert!(buf.capacity() >= ReadRoom::MIN && buf.capacity() < 2 * ReadRoom::MIN);
        // Reads that fill the room double it, up to the maximum.
        for _ in 0..20 {
            room.prepare(&mut buf);
            let spare = buf.capacity() - buf.len();
            buf.extend_from_slice(&vec![b'x'; spare]);
            room.record(spare);
        }
        assert_eq!(room.size, ReadRoom::MAX);
        let grown = buf.capacity();
        assert!(grown >= ReadRoom::MAX);
        // Consumed, then small reads: the size shrinks and the big buffer is given back.
        buf.clear();
        for _ in 0..20 {
            room.prepare(&mut buf);
            buf.extend_from_slice(b"*1\r\n$4\r\nPING\r\n");
            room.record(14);
            buf.clear();
        }
        assert_eq!(room.size, ReadRoom::MIN);
        room.prepare(&mut buf);
        assert!(buf.capacity() <= 4 * ReadRoom::MIN, "{}", buf.capacity());
    }
}

//! The tags of the window's logs, in the order they were stored, in blocks of a fixed size: the
//! window grows and shrinks by blocks, never by doubling a buffer.

use std::collections::VecDeque;

/// Tags in one block.
const BLOCK: u64 = 1 << 15;

/// Tags numbered since the window began; the oldest are dropped a block at a time.
#[derive(Default)]
pub struct Tags {
    blocks: VecDeque<Box<[u32]>>,
    /// The number of `blocks[0]`, counted since the window began.
    first_block: u64,
    /// The number of the next tag.
    end: u64,
}

impl Tags {
    /// The number the next tag gets.
    pub fn end(&self) -> u64 {
        self.end
    }

    pub fn push(&mut self, tag: u32) {
        let offset = (self.end % BLOCK) as usize;
        if offset == 0 {
            self.blocks
                .push_back(vec![0; BLOCK as usize].into_boxed_slice());
        }
        if let Some(block) = self.blocks.back_mut() {
            block[offset] = tag;
        }
        self.end += 1;
    }

    /// The tag numbered `at`, which must be between the oldest kept and the end.
    pub fn get(&self, at: u64) -> u32 {
        let block = (at / BLOCK - self.first_block) as usize;
        self.blocks[block][(at % BLOCK) as usize]
    }

    /// Forgets the tags from `end` on.
    pub fn truncate(&mut self, end: u64) {
        self.end = end.min(self.end);
        let blocks = self.end.div_ceil(BLOCK).saturating_sub(self.first_block) as usize;
        self.blocks.truncate(blocks);
    }

    /// Forgets the blocks whose tags are all before `start`.
    pub fn forget_before(&mut self, start: u64) {
        while (self.first_block + 1) * BLOCK <= start && !self.blocks.is_empty() {
            self.blocks.pop_front();
            self.first_block += 1;
        }
    }

    /// Bytes the tags hold.
    pub fn memory_bytes(&self) -> usize {
        self.blocks.len() * BLOCK as usize * std::mem::size_of::<u32>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_kept_by_number_across_blocks() {
        let mut tags = Tags::default();
        for n in 0..3 * BLOCK {
            tags.push(n as u32);
        }
        assert_eq!(tags.get(BLOCK + 5), (BLOCK + 5) as u32);
        tags.forget_before(BLOCK + 1);
        assert_eq!(tags.memory_bytes(), 2 * BLOCK as usize * 4);
        assert_eq!(tags.get(2 * BLOCK + 7), (2 * BLOCK + 7) as u32);
        tags.truncate(2 * BLOCK);
        assert_eq!(tags.end(), 2 * BLOCK);
        assert_eq!(tags.memory_bytes(), BLOCK as usize * 4);
        tags.push(9);
        assert_eq!(tags.get(2 * BLOCK), 9);
    }
}

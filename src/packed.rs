//! Many short strings (or byte strings) in one buffer plus their end offsets. A vocabulary's
//! 262 144 tokens held as one `String` each cost a 24-byte header and a heap block of at least
//! 32 bytes apiece (~15 MB for Gemma 3); packed they cost their bytes and 8 bytes each.

use std::ops::Range;

/// The buffer a `Packed` appends to and slices: `String` for text, `Vec<u8>` for bytes.
pub trait PackedBuf: Default {
    type Item: ?Sized;
    fn append(&mut self, item: &Self::Item);
    fn byte_len(&self) -> usize;
    /// `range` always spans whole items, so slicing text never cuts a character.
    fn slice(&self, range: Range<usize>) -> &Self::Item;
}

impl PackedBuf for String {
    type Item = str;
    fn append(&mut self, item: &str) {
        self.push_str(item);
    }
    fn byte_len(&self) -> usize {
        self.len()
    }
    fn slice(&self, range: Range<usize>) -> &str {
        &self[range]
    }
}

impl PackedBuf for Vec<u8> {
    type Item = [u8];
    fn append(&mut self, item: &[u8]) {
        self.extend_from_slice(item);
    }
    fn byte_len(&self) -> usize {
        self.len()
    }
    fn slice(&self, range: Range<usize>) -> &[u8] {
        &self[range]
    }
}

/// Items appended in order and read back by index.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Packed<B> {
    buf: B,
    /// `ends[i]` is where item `i` stops in `buf` (and item `i + 1` starts).
    ends: Vec<usize>,
}

pub type PackedStrings = Packed<String>;
pub type PackedBytes = Packed<Vec<u8>>;

impl<B: PackedBuf> Packed<B> {
    pub fn push(&mut self, item: &B::Item) {
        self.buf.append(item);
        self.ends.push(self.buf.byte_len());
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    pub fn get(&self, i: usize) -> Option<&B::Item> {
        let end = *self.ends.get(i)?;
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        Some(self.buf.slice(start..end))
    }

    pub fn iter(&self) -> impl ExactSizeIterator<Item = &B::Item> + Clone + '_ {
        (0..self.len()).map(|i| self.get(i).expect("index below len"))
    }
}

impl<'a, B: PackedBuf<Item = str>> FromIterator<&'a str> for Packed<B> {
    fn from_iter<I: IntoIterator<Item = &'a str>>(iter: I) -> Self {
        let mut p = Packed {
            buf: B::default(),
            ends: Vec::new(),
        };
        for s in iter {
            p.push(s);
        }
        p
    }
}

impl<B: PackedBuf> std::fmt::Debug for Packed<B>
where
    B::Item: std::fmt::Debug,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_come_back_as_pushed() {
        let words = ["", "a", "héllo", "", "▁▁", "z"];
        let p: PackedStrings = words.iter().copied().collect();
        assert_eq!(p.len(), words.len());
        assert_eq!(p.iter().collect::<Vec<_>>(), words);
        assert_eq!(p.get(2), Some("héllo"));
        assert_eq!(p.get(words.len()), None);

        let mut b = PackedBytes::default();
        b.push(&[0xFF, b'x']);
        b.push(&[]);
        b.push(&[7]);
        assert_eq!(b.iter().collect::<Vec<_>>(), [&[0xFF, b'x'][..], &[], &[7]]);
    }
}

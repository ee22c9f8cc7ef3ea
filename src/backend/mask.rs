//! `Mask`: which keys a query may see, as data. Every attention kernel (CPU and GPU, forward
//! and backward) reads the same description, so a model chooses its masks per layer in its
//! `ModelSpec` and no kernel knows an architecture. Always causal; optionally a sliding
//! window, and attention sinks (the first positions, always visible: StreamingLLM).

/// The keys a query at position `pos` sees: `j <= pos` and either `j` inside the window
/// (`j > pos - window`) or `j` one of the first `sinks` positions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Mask {
    /// Sliding window: a query at `p` sees keys at positions `> p - window`; `None` (or 0):
    /// every earlier key.
    pub window: Option<usize>,
    /// The first this many positions stay visible outside the window (only meaningful with
    /// one).
    pub sinks: usize,
}

impl Mask {
    /// Every earlier key (plain causal attention).
    pub const CAUSAL: Mask = Mask {
        window: None,
        sinks: 0,
    };

    pub fn window(window: Option<usize>) -> Mask {
        Mask { window, sinks: 0 }
    }

    /// The window a cache may cut this layer's keys to (a ring of blocks): none when the
    /// layer sees every key, or keeps sinks, whose old keys a ring would overwrite.
    pub fn ring_window(&self) -> Option<usize> {
        self.window.filter(|&w| w > 0 && self.sinks == 0)
    }

    /// First key of the window of a query at `pos`.
    pub fn window_start(&self, pos: usize) -> usize {
        match self.window {
            Some(w) if w > 0 => (pos + 1).saturating_sub(w),
            _ => 0,
        }
    }

    /// Sink keys a query at `pos` sees before its window (those not already inside it).
    pub fn n_sinks(&self, pos: usize) -> usize {
        self.sinks.min(self.window_start(pos))
    }

    /// How many keys a query at `pos` sees.
    pub fn n_keys(&self, pos: usize) -> usize {
        self.n_sinks(pos) + pos + 1 - self.window_start(pos)
    }

    /// Position of the `i`-th key (`i < n_keys(pos)`) a query at `pos` sees, in increasing
    /// position: the sinks, then the window.
    pub fn key(&self, pos: usize, i: usize) -> usize {
        let n_sinks = self.n_sinks(pos);
        if i < n_sinks {
            i
        } else {
            self.window_start(pos) + i - n_sinks
        }
    }

    /// Whether a query at `pos` sees the key at `j`.
    pub fn visible(&self, pos: usize, j: usize) -> bool {
        j <= pos && (j >= self.window_start(pos) || j < self.sinks)
    }

    /// The keys a query at `pos` sees, in increasing position.
    pub fn keys(&self, pos: usize) -> impl Iterator<Item = usize> {
        (0..self.n_sinks(pos)).chain(self.window_start(pos)..=pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_exactly_the_visible_positions() {
        for mask in [
            Mask::CAUSAL,
            Mask::window(Some(1)),
            Mask::window(Some(4)),
            Mask {
                window: Some(4),
                sinks: 2,
            },
            Mask {
                window: Some(3),
                sinks: 7,
            },
            Mask {
                window: None,
                sinks: 3,
            },
        ] {
            for pos in 0..20 {
                let want: Vec<usize> = (0..30).filter(|&j| mask.visible(pos, j)).collect();
                let keys: Vec<usize> = mask.keys(pos).collect();
                assert_eq!(keys, want, "{mask:?} at {pos}");
                assert_eq!(mask.n_keys(pos), want.len());
                let by_index: Vec<usize> =
                    (0..mask.n_keys(pos)).map(|i| mask.key(pos, i)).collect();
                assert_eq!(by_index, want);
            }
        }
    }
}

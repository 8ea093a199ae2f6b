//! The pieces of the pipeline that need no GPU (unit-tested in CI): the frame-boundary swap
//! of the active configuration, the bounded cache of prepared splits, and the prefix-slot table.

use std::collections::VecDeque;

/// The two stages; each adopts a new configuration at its own next frame boundary.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stage {
    Encoder = 0,
    Decoder = 1,
}

/// Holds the published configuration and which generation each stage last ran with.
/// `publish` never blocks a stage; a stage sees the change when it next calls `acquire`
/// (its frame boundary), and learns whether it must fence its new stream after the old one.
#[derive(Debug)]
pub struct FrameBoundarySwap<T: Clone> {
    current: T,
    generation: u64,
    seen: [u64; 2],
}

impl<T: Clone> FrameBoundarySwap<T> {
    pub fn new(initial: T) -> Self {
        FrameBoundarySwap {
            current: initial,
            generation: 0,
            seen: [0, 0],
        }
    }
    /// Makes `next` the configuration of every frame that starts from now on.
    pub fn publish(&mut self, next: T) -> u64 {
        self.current = next;
        self.generation += 1;
        self.generation
    }
    /// Called by `stage` at a frame boundary: the configuration to run this frame with, and
    /// `true` if it differs from the one this stage ran its previous frame with.
    pub fn acquire(&mut self, stage: Stage) -> (T, bool) {
        let s = &mut self.seen[stage as usize];
        let switched = *s != self.generation;
        *s = self.generation;
        (self.current.clone(), switched)
    }
    /// Whether `stage` has not yet adopted the newest configuration.
    pub fn pending(&self, stage: Stage) -> bool {
        self.seen[stage as usize] != self.generation
    }
    /// Both stages run the newest configuration.
    pub fn settled(&self) -> bool {
        !self.pending(Stage::Encoder) && !self.pending(Stage::Decoder)
    }
    pub fn current(&self) -> &T {
        &self.current
    }
    pub fn generation(&self) -> u64 {
        self.generation
    }
}

/// A least-recently-used cache with a hard bound (prepared splits hold contexts, streams and
/// graphs; an evicted one is freed once no stage still runs on it).
#[derive(Debug)]
pub struct BoundedCache<K: PartialEq + Clone, V: Clone> {
    cap: usize,
    items: VecDeque<(K, V)>,
}

impl<K: PartialEq + Clone, V: Clone> BoundedCache<K, V> {
    pub fn new(cap: usize) -> Self {
        BoundedCache {
            cap: cap.max(1),
            items: VecDeque::new(),
        }
    }
    pub fn capacity(&self) -> usize {
        self.cap
    }
    pub fn len(&self) -> usize {
        self.items.len()
    }
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
    /// Looks up and marks as most recently used.
    pub fn get(&mut self, k: &K) -> Option<V> {
        let i = self.items.iter().position(|(kk, _)| kk == k)?;
        let item = self.items.remove(i)?;
        let v = item.1.clone();
        self.items.push_back(item);
        Some(v)
    }
    /// Inserts (replacing an equal key) and returns what was evicted to stay within the bound.
    pub fn insert(&mut self, k: K, v: V) -> Vec<(K, V)> {
        if let Some(i) = self.items.iter().position(|(kk, _)| *kk == k) {
            self.items.remove(i);
        }
        self.items.push_back((k, v));
        let mut out = Vec::new();
        while self.items.len() > self.cap {
            out.extend(self.items.pop_front());
        }
        out
    }
    /// Drops every entry (returned, so that the caller decides when they are freed).
    pub fn clear(&mut self) -> Vec<(K, V)> {
        self.items.drain(..).collect()
    }
    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.items.iter().map(|(k, _)| k)
    }
}

/// Observation ids, increasing from 1 in submission order.
pub type ObsId = u64;

/// What a prefix slot holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotState {
    Empty,
    /// The encoder of this observation is enqueued and may still run.
    Writing(ObsId),
    /// The prefix of this observation is complete.
    Ready(ObsId),
}

impl SlotState {
    pub fn obs(&self) -> Option<ObsId> {
        match *self {
            SlotState::Empty => None,
            SlotState::Writing(o) | SlotState::Ready(o) => Some(o),
        }
    }
}

/// Host-side bookkeeping of the prefix slots (the GPU-side fences are events, held beside).
/// Rules: the encoder writes the oldest slot that no decoder has pinned and no encoder is
/// writing, so the newest complete prefix is never overwritten while it is the newest; a
/// decoder pins the slot it reads until its reads are enqueued and fenced.
#[derive(Debug, Clone)]
pub struct SlotTable {
    pub states: Vec<SlotState>,
    pub pins: Vec<u32>,
}

impl SlotTable {
    pub fn new(n: usize) -> Self {
        assert!(n >= 2, "double buffering needs at least 2 prefix slots");
        SlotTable {
            states: vec![SlotState::Empty; n],
            pins: vec![0; n],
        }
    }
    /// The slot the next encoder run may write, if any: not pinned, not being written, and
    /// not holding the newest observation (the prefix the next decoder will read).
    pub fn slot_to_write(&self) -> Option<usize> {
        let newest = self.newest_slot();
        (0..self.states.len())
            .filter(|&i| {
                self.pins[i] == 0
                    && !matches!(self.states[i], SlotState::Writing(_))
                    && Some(i) != newest
            })
            .min_by_key(|&i| self.states[i].obs().unwrap_or(0))
    }
    /// The slot of the newest observation, complete or not.
    pub fn newest_slot(&self) -> Option<usize> {
        (0..self.states.len())
            .filter(|&i| self.states[i].obs().is_some())
            .max_by_key(|&i| self.states[i].obs())
    }
    /// The complete prefix of the newest observation.
    pub fn newest_ready(&self) -> Option<(usize, ObsId)> {
        self.states
            .iter()
            .enumerate()
            .filter_map(|(i, s)| match s {
                SlotState::Ready(o) => Some((i, *o)),
                _ => None,
            })
            .max_by_key(|&(_, o)| o)
    }
    /// The newest prefix (complete or being written) of an observation older than `before`.
    pub fn newest_before(&self, before: ObsId) -> Option<(usize, ObsId)> {
        self.states
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.obs().map(|o| (i, o)))
            .filter(|&(_, o)| o < before)
            .max_by_key(|&(_, o)| o)
    }
    pub fn slot_of(&self, obs: ObsId) -> Option<usize> {
        self.states.iter().position(|s| s.obs() == Some(obs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_stage_switches_once_at_its_own_boundary() {
        let mut s = FrameBoundarySwap::new("a");
        assert_eq!(s.acquire(Stage::Encoder), ("a", false));
        assert_eq!(s.acquire(Stage::Decoder), ("a", false));
        assert!(s.settled());
        s.publish("b");
        assert!(s.pending(Stage::Encoder) && s.pending(Stage::Decoder));
        // The decoder runs two frames before the encoder reaches its boundary.
        assert_eq!(s.acquire(Stage::Decoder), ("b", true));
        assert_eq!(s.acquire(Stage::Decoder), ("b", false));
        assert!(!s.settled());
        assert_eq!(s.acquire(Stage::Encoder), ("b", true));
        assert!(s.settled());
        // Two publishes before a boundary: the stage jumps straight to the newest.
        s.publish("c");
        s.publish("d");
        assert_eq!(s.acquire(Stage::Encoder), ("d", true));
        assert_eq!(s.generation(), 3);
    }

    #[test]
    fn cache_is_bounded_and_lru() {
        let mut c = BoundedCache::new(3);
        assert!(c.insert(1, "x").is_empty());
        c.insert(2, "y");
        c.insert(3, "z");
        assert_eq!(c.get(&1), Some("x")); // 1 is now the most recent
        let ev = c.insert(4, "w");
        assert_eq!(ev, vec![(2, "y")]);
        assert_eq!(c.len(), 3);
        assert_eq!(c.get(&2), None);
        let ev = c.insert(3, "z2"); // replace, no eviction
        assert!(ev.is_empty());
        assert_eq!(c.get(&3), Some("z2"));
        for k in 10..100 {
            c.insert(k, "n");
            assert!(c.len() <= 3);
        }
        let dropped = c.clear();
        assert_eq!(dropped.len(), 3);
        assert!(c.is_empty());
        assert_eq!(c.get(&99), None);
    }

    #[test]
    fn slot_rules_never_overwrite_newest_or_pinned() {
        let mut t = SlotTable::new(2);
        assert_eq!(t.slot_to_write(), Some(0));
        t.states[0] = SlotState::Writing(1);
        assert_eq!(t.slot_to_write(), Some(1));
        assert_eq!(t.newest_ready(), None);
        t.states[0] = SlotState::Ready(1);
        assert_eq!(t.newest_ready(), Some((0, 1)));
        // The encoder of obs 2 takes the empty slot, not the newest complete one.
        assert_eq!(t.slot_to_write(), Some(1));
        t.states[1] = SlotState::Writing(2);
        // While 2 is being written (a pipelined forward), obs 1 may be recycled: the next
        // decoder reads obs 2.
        assert_eq!(t.slot_to_write(), Some(0));
        t.pins[0] = 1; // a decoder reads obs 1
        assert_eq!(t.slot_to_write(), None);
        t.pins[0] = 0;
        t.states[1] = SlotState::Ready(2);
        assert_eq!(t.newest_ready(), Some((1, 2)));
        assert_eq!(t.slot_to_write(), Some(0), "the older prefix is recycled");
        assert_eq!(t.newest_before(2), Some((0, 1)));
        assert_eq!(t.newest_before(1), None);
        assert_eq!(t.slot_of(2), Some(1));
    }

    #[test]
    fn random_schedules_keep_slot_invariants() {
        // Simulate interleavings of encoder starts/finishes and decoder pins.
        let mut rng = 12345u64;
        let mut next = || {
            rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1);
            (rng >> 33) as u32
        };
        for slots in 2..=4 {
            let mut t = SlotTable::new(slots);
            let mut obs = 0;
            let mut writing: Option<usize> = None;
            for _ in 0..10_000 {
                match next() % 4 {
                    0 if writing.is_none() => {
                        if let Some(s) = t.slot_to_write() {
                            // Never the newest prefix, never a pinned one.
                            assert_ne!(Some(s), t.newest_ready().map(|(n, _)| n));
                            assert_eq!(t.pins[s], 0);
                            obs += 1;
                            t.states[s] = SlotState::Writing(obs);
                            writing = Some(s);
                        }
                    }
                    1 => {
                        if let Some(s) = writing.take() {
                            let o = t.states[s].obs().unwrap();
                            t.states[s] = SlotState::Ready(o);
                        }
                    }
                    2 => {
                        if let Some((s, _)) = t.newest_ready() {
                            t.pins[s] += 1;
                        }
                    }
                    _ => {
                        if let Some(s) = (0..slots).find(|&s| t.pins[s] > 0) {
                            t.pins[s] -= 1;
                        }
                    }
                }
            }
        }
    }
}

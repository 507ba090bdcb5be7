//! A small byte-bounded LRU for immutable objects (segment buckets, tables). Everything
//! cached is immutable in the store, so there is no invalidation, only eviction.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Arc;

pub(super) struct Lru<K, V> {
    map: HashMap<K, (Arc<V>, usize, u64)>,
    tick: u64,
    used: usize,
    budget: usize,
}

impl<K: Eq + Hash + Clone, V> Lru<K, V> {
    pub(super) fn new(budget: usize) -> Self {
        Lru {
            map: HashMap::new(),
            tick: 0,
            used: 0,
            budget,
        }
    }

    pub(super) fn get(&mut self, k: &K) -> Option<Arc<V>> {
        self.tick += 1;
        let t = self.tick;
        self.map.get_mut(k).map(|e| {
            e.2 = t;
            e.0.clone()
        })
    }

    pub(super) fn insert(&mut self, k: K, v: Arc<V>, size: usize) {
        self.tick += 1;
        if let Some(old) = self.map.insert(k, (v, size, self.tick)) {
            self.used -= old.1;
        }
        self.used += size;
        while self.used > self.budget && self.map.len() > 1 {
            // Evict the oldest eighth in one pass so eviction stays amortised O(1) per insert.
            let mut ticks: Vec<u64> = self.map.values().map(|e| e.2).collect();
            let nth = ticks.len() / 8;
            let (_, cut, _) = ticks.select_nth_unstable(nth);
            let cut = *cut;
            let mut freed = 0;
            self.map.retain(|_, e| {
                if e.2 <= cut {
                    freed += e.1;
                    false
                } else {
                    true
                }
            });
            self.used -= freed;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stays_within_budget_and_keeps_recent() {
        let mut l: Lru<u32, Vec<u8>> = Lru::new(1000);
        for i in 0..100u32 {
            l.insert(i, Arc::new(vec![0; 100]), 100);
            assert!(l.used <= 1000);
        }
        assert!(l.get(&99).is_some());
        assert!(l.get(&0).is_none());
    }
}

//! The byte-budgeted LRU behind a shard's response cache: a hash map from
//! key to a slot in a slab, and a doubly linked list through the slots in
//! recency order. Every entry has a size the caller states (the cache counts
//! its key, stored headers and body, see [`super::entry_size`]); the sum of
//! the sizes of the entries held never exceeds the budget: an insert first
//! evicts from the least recently used end until the new entry fits, and an
//! entry larger than the whole budget is refused.
//!
//! Single-threaded by design (one per shard, behind a `RefCell`).

use std::collections::HashMap;
use std::rc::Rc;

const NIL: usize = usize::MAX;

struct Node<V> {
    key: Rc<[u8]>,
    value: V,
    size: usize,
    /// Towards the most recently used end.
    prev: usize,
    /// Towards the least recently used end.
    next: usize,
}

/// A least-recently-used map whose entries' sizes sum to at most `budget`.
pub struct Lru<V> {
    map: HashMap<Rc<[u8]>, usize, ahash::RandomState>,
    slots: Vec<Option<Node<V>>>,
    free: Vec<usize>,
    /// Most recently used.
    head: usize,
    /// Least recently used: the next to be evicted.
    tail: usize,
    used: usize,
    budget: usize,
    evictions: u64,
}

/// What [`Lru::insert`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inserted {
    /// Stored, after evicting this many entries.
    Stored { evicted: usize },
    /// Larger than the whole budget: not stored (and nothing evicted).
    TooLarge,
}

impl<V> Lru<V> {
    pub fn new(budget: usize) -> Lru<V> {
        Lru {
            map: HashMap::default(),
            slots: Vec::new(),
            free: Vec::new(),
            head: NIL,
            tail: NIL,
            used: 0,
            budget,
            evictions: 0,
        }
    }

    /// Bytes held (the sum of the entries' sizes).
    pub fn used(&self) -> usize {
        self.used
    }

    pub fn budget(&self) -> usize {
        self.budget
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Entries evicted to make room since the cache was made.
    pub fn evictions(&self) -> u64 {
        self.evictions
    }

    /// The entry for `key`, marked most recently used.
    pub fn get(&mut self, key: &[u8]) -> Option<&V> {
        let i = *self.map.get(key)?;
        self.unlink(i);
        self.push_front(i);
        self.slots[i].as_ref().map(|n| &n.value)
    }

    /// The entry for `key` without changing its recency.
    pub fn peek(&self, key: &[u8]) -> Option<&V> {
        let i = *self.map.get(key)?;
        self.slots[i].as_ref().map(|n| &n.value)
    }

    /// Stores `value` under `key` as the most recently used entry, replacing
    /// any entry with that key and evicting least recently used entries
    /// until `size` fits in the budget.
    pub fn insert(&mut self, key: Rc<[u8]>, value: V, size: usize) -> Inserted {
        if size > self.budget {
            return Inserted::TooLarge;
        }
        self.remove(&key);
        let mut evicted = 0;
        while self.used + size > self.budget && self.tail != NIL {
            let t = self.tail;
            self.remove_slot(t);
            evicted += 1;
        }
        self.evictions += evicted as u64;
        let node = Node {
            key: key.clone(),
            value,
            size,
            prev: NIL,
            next: NIL,
        };
        let i = match self.free.pop() {
            Some(i) => {
                self.slots[i] = Some(node);
                i
            }
            None => {
                self.slots.push(Some(node));
                self.slots.len() - 1
            }
        };
        self.push_front(i);
        self.map.insert(key, i);
        self.used += size;
        Inserted::Stored { evicted }
    }

    /// Removes and returns the entry for `key`.
    pub fn remove(&mut self, key: &[u8]) -> Option<V> {
        let i = *self.map.get(key)?;
        self.remove_slot(i)
    }

    fn remove_slot(&mut self, i: usize) -> Option<V> {
        self.unlink(i);
        let node = self.slots[i].take()?;
        self.map.remove(&node.key);
        self.free.push(i);
        self.used -= node.size;
        Some(node.value)
    }

    fn unlink(&mut self, i: usize) {
        let Some(n) = self.slots[i].as_ref() else {
            return;
        };
        let (prev, next) = (n.prev, n.next);
        match prev {
            NIL if self.head == i => self.head = next,
            NIL => return, // not linked
            p => {
                if let Some(pn) = self.slots[p].as_mut() {
                    pn.next = next;
                }
            }
        }
        match next {
            NIL => self.tail = prev,
            nx => {
                if let Some(nn) = self.slots[nx].as_mut() {
                    nn.prev = prev;
                }
            }
        }
        if let Some(n) = self.slots[i].as_mut() {
            n.prev = NIL;
            n.next = NIL;
        }
    }

    fn push_front(&mut self, i: usize) {
        let old = self.head;
        if let Some(n) = self.slots[i].as_mut() {
            n.prev = NIL;
            n.next = old;
        }
        if old != NIL {
            if let Some(o) = self.slots[old].as_mut() {
                o.prev = i;
            }
        } else {
            self.tail = i;
        }
        self.head = i;
    }

    /// Keys from most to least recently used (for tests and debugging).
    pub fn keys_by_recency(&self) -> Vec<Rc<[u8]>> {
        let mut out = Vec::with_capacity(self.len());
        let mut i = self.head;
        while i != NIL {
            match self.slots[i].as_ref() {
                Some(n) => {
                    out.push(n.key.clone());
                    i = n.next;
                }
                None => break,
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(s: &str) -> Rc<[u8]> {
        Rc::from(s.as_bytes())
    }

    fn order(l: &Lru<u32>) -> Vec<String> {
        l.keys_by_recency()
            .iter()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .collect()
    }

    #[test]
    fn insert_get_remove_track_bytes() {
        let mut l = Lru::new(100);
        assert_eq!(l.insert(k("a"), 1, 30), Inserted::Stored { evicted: 0 });
        assert_eq!(l.insert(k("b"), 2, 30), Inserted::Stored { evicted: 0 });
        assert_eq!(l.used(), 60);
        assert_eq!(l.get(b"a"), Some(&1));
        assert_eq!(l.remove(b"a"), Some(1));
        assert_eq!(l.used(), 30);
        assert_eq!(l.len(), 1);
        assert_eq!(l.get(b"a"), None);
        assert_eq!(l.remove(b"a"), None);
    }

    #[test]
    fn evicts_least_recently_used_first() {
        let mut l = Lru::new(100);
        l.insert(k("a"), 1, 40);
        l.insert(k("b"), 2, 40);
        // Touch A: B is now the least recently used.
        assert_eq!(l.get(b"a"), Some(&1));
        assert_eq!(l.insert(k("c"), 3, 40), Inserted::Stored { evicted: 1 });
        assert_eq!(l.peek(b"b"), None, "B was least recently used");
        assert_eq!(l.peek(b"a"), Some(&1));
        assert_eq!(l.peek(b"c"), Some(&3));
        assert_eq!(order(&l), ["c", "a"]);
        assert_eq!(l.used(), 80);
        assert_eq!(l.evictions(), 1);
    }

    #[test]
    fn a_big_insert_evicts_as_many_as_needed() {
        let mut l = Lru::new(100);
        for (i, name) in ["a", "b", "c", "d"].iter().enumerate() {
            l.insert(k(name), i as u32, 25);
        }
        assert_eq!(l.used(), 100);
        assert_eq!(l.insert(k("big"), 9, 70), Inserted::Stored { evicted: 3 });
        assert_eq!(order(&l), ["big", "d"]);
        assert_eq!(l.used(), 95);
    }

    #[test]
    fn exactly_the_budget_fits_and_one_more_byte_does_not() {
        let mut l = Lru::new(100);
        assert_eq!(l.insert(k("a"), 1, 100), Inserted::Stored { evicted: 0 });
        assert_eq!(l.used(), 100);
        assert_eq!(l.insert(k("b"), 2, 101), Inserted::TooLarge);
        // A refused insert evicts nothing.
        assert_eq!(l.peek(b"a"), Some(&1));
        assert_eq!(l.used(), 100);
    }

    #[test]
    fn replacing_a_key_counts_only_the_new_size() {
        let mut l = Lru::new(100);
        l.insert(k("a"), 1, 60);
        assert_eq!(l.insert(k("a"), 2, 70), Inserted::Stored { evicted: 0 });
        assert_eq!(l.used(), 70);
        assert_eq!(l.len(), 1);
        assert_eq!(l.peek(b"a"), Some(&2));
    }

    #[test]
    fn slots_are_reused_and_order_survives_churn() {
        let mut l = Lru::new(50);
        for round in 0..1000u32 {
            let name = format!("k{}", round % 7);
            l.insert(k(&name), round, 10);
            assert!(l.used() <= l.budget());
            assert_eq!(l.used(), l.len() * 10);
            assert_eq!(order(&l).len(), l.len());
        }
        assert_eq!(l.len(), 5);
        assert!(l.slots.len() <= 6, "slots reused: {}", l.slots.len());
        // The five most recent inserts, newest first.
        assert_eq!(order(&l), ["k5", "k4", "k3", "k2", "k1"]);
    }

    #[test]
    fn unlinking_head_middle_and_tail() {
        let mut l = Lru::new(100);
        for name in ["a", "b", "c"] {
            l.insert(k(name), 0, 1);
        }
        assert_eq!(order(&l), ["c", "b", "a"]);
        l.get(b"b");
        assert_eq!(order(&l), ["b", "c", "a"]);
        l.get(b"a");
        assert_eq!(order(&l), ["a", "b", "c"]);
        l.remove(b"b");
        assert_eq!(order(&l), ["a", "c"]);
        l.remove(b"a");
        l.remove(b"c");
        assert!(l.is_empty());
        assert_eq!(l.used(), 0);
        l.insert(k("z"), 0, 1);
        assert_eq!(order(&l), ["z"]);
    }

    /// Random operations against a plain model (a Vec in recency order):
    /// the same entries, the same order, the same byte count, never over
    /// the budget.
    #[test]
    fn matches_a_simple_model() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let budget = 1000;
        let mut l: Lru<u32> = Lru::new(budget);
        // Most recent first: (key, value, size).
        let mut model: Vec<(String, u32, usize)> = Vec::new();
        for step in 0..20_000u32 {
            let name = format!("k{}", next(40));
            match next(3) {
                0 => {
                    let size = 1 + next(400) as usize;
                    let got = l.insert(k(&name), step, size);
                    model.retain(|e| e.0 != name);
                    let mut evicted = 0;
                    while model.iter().map(|e| e.2).sum::<usize>() + size > budget {
                        model.pop();
                        evicted += 1;
                    }
                    model.insert(0, (name, step, size));
                    assert_eq!(got, Inserted::Stored { evicted });
                }
                1 => {
                    let want = model.iter().position(|e| e.0 == name).map(|i| {
                        let e = model.remove(i);
                        let v = e.1;
                        model.insert(0, e);
                        v
                    });
                    assert_eq!(l.get(name.as_bytes()).copied(), want);
                }
                _ => {
                    let want = model
                        .iter()
                        .position(|e| e.0 == name)
                        .map(|i| model.remove(i).1);
                    assert_eq!(l.remove(name.as_bytes()), want);
                }
            }
            assert!(l.used() <= budget);
            assert_eq!(l.used(), model.iter().map(|e| e.2).sum::<usize>());
            let names: Vec<&str> = model.iter().map(|e| e.0.as_str()).collect();
            assert_eq!(order(&l), names, "step {step}");
        }
    }
}

//! A coordinator thread's channels to the shards' reconcilers (usage
//! plans, throttling), and how it wakes a reconciler that sleeps with
//! nothing to do: before such a sleep the reconciler leaves its waker in a
//! one-place channel; at the end of each pass the coordinator wakes every
//! shard it sent anything to.

use crate::net::RemoteWaker;
use crossbeam_channel::{Receiver, Sender};

/// A shard's end: its inbox, and where its reconciler leaves its waker.
pub type ShardEnd<M> = (Receiver<M>, Sender<RemoteWaker>);

/// The coordinator's side: each shard's inbox, and the wakers of those
/// whose reconciler sleeps.
pub struct ToShards<M> {
    tx: Vec<Sender<M>>,
    wakers: Vec<Receiver<RemoteWaker>>,
    sent: Vec<bool>,
}

impl<M> ToShards<M> {
    /// Channels for `shards` shards: the coordinator's side, and each
    /// shard's end (its inbox, and where its reconciler leaves its waker).
    pub fn new(shards: usize) -> (ToShards<M>, Vec<ShardEnd<M>>) {
        let mut to = ToShards {
            tx: Vec::with_capacity(shards),
            wakers: Vec::with_capacity(shards),
            sent: vec![false; shards],
        };
        let mut ends = Vec::with_capacity(shards);
        for _ in 0..shards {
            let (tx, rx) = crossbeam_channel::unbounded();
            // One waker at a time: the reconciler is one task.
            let (wtx, wrx) = crossbeam_channel::bounded(1);
            to.tx.push(tx);
            to.wakers.push(wrx);
            ends.push((rx, wtx));
        }
        (to, ends)
    }

    pub fn send(&mut self, shard: usize, m: M) {
        if let Some(tx) = self.tx.get(shard) {
            let _ = tx.send(m);
            self.sent[shard] = true;
        }
    }

    /// Wakes every shard sent something since the last call, if its
    /// reconciler left a waker (it sleeps with nothing to do).
    pub fn wake(&mut self) {
        for (s, sent) in self.sent.iter_mut().enumerate() {
            if std::mem::take(sent) {
                while let Ok(w) = self.wakers[s].try_recv() {
                    w.wake();
                }
            }
        }
    }
}

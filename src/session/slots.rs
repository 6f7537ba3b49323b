//! The queue from a session's request side to its reply side: what each request's reply will
//! be (a local answer, a shared connection's reply, replies due on the pinned connection), in
//! request order.
//!
//! Both sides run in their session's one task, so the queue needs no cross-task machinery of
//! its own: a `VecDeque` that grows with what is queued (an idle session keeps a few slots'
//! room, where a tokio channel allocates 32 at once, 3.8 KB for every idle connection) and
//! the two wakers. The lock is never contended (one task), so it is one atomic operation each
//! way. Bounded: a request side ahead of its reply side by `cap` slots waits.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Poll, Waker};

/// Room kept after a burst, and the room past which a drained queue shrinks to it.
const KEEP: usize = 4;
const SHRINK_ABOVE: usize = 64;

struct Inner<T> {
    queue: VecDeque<T>,
    cap: usize,
    /// The sender was dropped: once the queue is empty, the receiver sees the end.
    sender_gone: bool,
    /// The receiver was dropped: sending fails.
    receiver_gone: bool,
    /// The receiver waits for a slot.
    receiver: Option<Waker>,
    /// The sender waits for room.
    sender: Option<Waker>,
}

pub struct Sender<T>(Arc<Mutex<Inner<T>>>);
pub struct Receiver<T>(Arc<Mutex<Inner<T>>>);

/// A full queue, or a receiver that has gone (the value comes back).
pub enum TrySendError<T> {
    Full(T),
    Closed(T),
}

/// Nothing queued now; or nothing ever again (the sender has gone).
#[derive(Debug, PartialEq, Eq)]
pub enum TryRecvError {
    Empty,
    Disconnected,
}

pub fn channel<T>(cap: usize) -> (Sender<T>, Receiver<T>) {
    let inner = Arc::new(Mutex::new(Inner {
        queue: VecDeque::new(),
        cap: cap.max(1),
        sender_gone: false,
        receiver_gone: false,
        receiver: None,
        sender: None,
    }));
    (Sender(inner.clone()), Receiver(inner))
}

fn lock<T>(inner: &Mutex<Inner<T>>) -> MutexGuard<'_, Inner<T>> {
    // Nothing panics while holding the lock (pushes, pops and waker swaps only), so a
    // poisoned lock still holds a consistent queue.
    inner.lock().unwrap_or_else(|p| p.into_inner())
}

impl<T> Sender<T> {
    pub fn try_send(&self, value: T) -> Result<(), TrySendError<T>> {
        let mut inner = lock(&self.0);
        if inner.receiver_gone {
            return Err(TrySendError::Closed(value));
        }
        if inner.queue.len() >= inner.cap {
            return Err(TrySendError::Full(value));
        }
        inner.queue.push_back(value);
        let waker = inner.receiver.take();
        drop(inner);
        if let Some(w) = waker {
            w.wake();
        }
        Ok(())
    }

    /// Waits for room; `Err` gives the value back when the receiver has gone.
    pub async fn send(&self, value: T) -> Result<(), T> {
        let mut value = Some(value);
        poll_fn(|cx| {
            let mut inner = lock(&self.0);
            let Some(v) = value.take() else {
                return Poll::Ready(Ok(()));
            };
            if inner.receiver_gone {
                return Poll::Ready(Err(v));
            }
            if inner.queue.len() >= inner.cap {
                inner.sender = Some(cx.waker().clone());
                value = Some(v);
                return Poll::Pending;
            }
            inner.queue.push_back(v);
            let waker = inner.receiver.take();
            drop(inner);
            if let Some(w) = waker {
                w.wake();
            }
            Poll::Ready(Ok(()))
        })
        .await
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let mut inner = lock(&self.0);
        inner.sender_gone = true;
        let waker = inner.receiver.take();
        drop(inner);
        if let Some(w) = waker {
            w.wake();
        }
    }
}

impl<T> Receiver<T> {
    pub fn try_recv(&mut self) -> Result<T, TryRecvError> {
        let mut inner = lock(&self.0);
        match inner.queue.pop_front() {
            Some(v) => {
                // A burst's room is given back once it is drained (a deep pipeline of local
                // answers fills up to `cap` slots), so an idle session keeps a few only.
                if inner.queue.is_empty() && inner.queue.capacity() > SHRINK_ABOVE {
                    inner.queue.shrink_to(KEEP);
                }
                let waker = inner.sender.take();
                drop(inner);
                if let Some(w) = waker {
                    w.wake();
                }
                Ok(v)
            }
            None if inner.sender_gone => Err(TryRecvError::Disconnected),
            None => Err(TryRecvError::Empty),
        }
    }

    /// The next slot; `None` once the sender has gone and everything queued was taken.
    pub async fn recv(&mut self) -> Option<T> {
        poll_fn(|cx| match self.try_recv() {
            Ok(v) => Poll::Ready(Some(v)),
            Err(TryRecvError::Disconnected) => Poll::Ready(None),
            Err(TryRecvError::Empty) => {
                let mut inner = lock(&self.0);
                // Checked again under the lock the sender takes, so a slot pushed between the
                // two looks is not missed.
                if !inner.queue.is_empty() || inner.sender_gone {
                    drop(inner);
                    cx.waker().wake_by_ref();
                } else {
                    inner.receiver = Some(cx.waker().clone());
                }
                Poll::Pending
            }
        })
        .await
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let mut inner = lock(&self.0);
        inner.receiver_gone = true;
        // What is queued is dropped now (a slot may hold a reply's buffer or a oneshot whose
        // other side waits for it).
        let queued = std::mem::take(&mut inner.queue);
        let waker = inner.sender.take();
        drop(inner);
        drop(queued);
        if let Some(w) = waker {
            w.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn delivers_in_order_and_ends_when_the_sender_goes() {
        let (tx, mut rx) = channel(4);
        for i in 0..3 {
            assert!(tx.try_send(i).is_ok());
        }
        assert_eq!(rx.try_recv(), Ok(0));
        assert_eq!(rx.recv().await, Some(1));
        drop(tx);
        assert_eq!(rx.recv().await, Some(2));
        assert_eq!(rx.recv().await, None);
        assert_eq!(rx.try_recv(), Err(TryRecvError::Disconnected));
    }

    #[tokio::test]
    async fn a_full_queue_waits_for_room_and_a_gone_receiver_fails() {
        let (tx, mut rx) = channel(2);
        assert!(tx.try_send(1).is_ok());
        assert!(tx.try_send(2).is_ok());
        assert!(matches!(tx.try_send(3), Err(TrySendError::Full(3))));
        let (sent, got) = tokio::join!(tx.send(3), async {
            tokio::task::yield_now().await;
            rx.recv().await
        });
        assert!(sent.is_ok());
        assert_eq!(got, Some(1));
        drop(rx);
        assert!(matches!(tx.try_send(4), Err(TrySendError::Closed(4))));
        assert_eq!(tx.send(5).await, Err(5));
    }

    #[test]
    fn a_drained_burst_gives_its_room_back() {
        let (tx, mut rx) = channel(1024);
        for i in 0..1000 {
            assert!(tx.try_send(i).is_ok());
        }
        while rx.try_recv().is_ok() {}
        assert!(lock(&rx.0).queue.capacity() <= SHRINK_ABOVE);
    }

    #[tokio::test]
    async fn a_waiting_receiver_is_woken_by_a_send_from_elsewhere() {
        let (tx, mut rx) = channel(1);
        let waiter = tokio::spawn(async move { rx.recv().await });
        tokio::task::yield_now().await;
        assert!(tx.try_send(7).is_ok());
        assert_eq!(waiter.await.unwrap(), Some(7));
    }
}

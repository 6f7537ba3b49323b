//! A session's two halves, run in its one task, each polled only when something it waits on
//! woke it.
//!
//! `tokio::join!` polls both whenever the task wakes: the request side's TLS read and its
//! wake-ups (cancellation tokens and a `Notify`, each a lock) on every reply, the reply side on
//! every request, and the whole task once more for the wake one half gives the other while the
//! task runs (a slot queued for the reply side). Here each half has a waker of its own, which
//! marks the half and wakes the task only when the task is not polling already; a poll takes
//! the marked halves in turn until none is left.

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;

const FIRST: u8 = 1;
const SECOND: u8 = 2;
/// The task is inside its poll: a half's wake marks it there, and the poll goes round again.
const POLLING: u8 = 4;
/// Rounds in one poll before the task lets the scheduler run the others (two halves that kept
/// waking each other would otherwise hold the thread).
const ROUNDS: usize = 8;

struct Marks {
    state: AtomicU8,
    task: AtomicWaker,
}

struct Half {
    marks: Arc<Marks>,
    bit: u8,
}

impl Wake for Half {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let before = self.marks.state.fetch_or(self.bit, Ordering::AcqRel);
        if before & POLLING == 0 {
            self.marks.task.wake();
        }
    }
}

/// Runs `a` and `b` to completion in the calling task, as `tokio::join!` does, polling each
/// only when its own waker fired. They come pinned where the caller built them: moved in here,
/// each would take its room twice in the session's state (the argument and the pinned copy),
/// about 5 KiB per idle connection.
pub async fn both<A: Future, B: Future>(
    mut a: Pin<&mut A>,
    mut b: Pin<&mut B>,
) -> (A::Output, B::Output) {
    let marks = Arc::new(Marks {
        state: AtomicU8::new(FIRST | SECOND),
        task: AtomicWaker::new(),
    });
    let wakers = [FIRST, SECOND].map(|bit| {
        Waker::from(Arc::new(Half {
            marks: marks.clone(),
            bit,
        }))
    });
    let (mut out_a, mut out_b) = (None, None);
    poll_fn(|cx| {
        marks.task.register(cx.waker());
        for _ in 0..ROUNDS {
            let due = marks.state.swap(POLLING, Ordering::AcqRel);
            if due & FIRST != 0 && out_a.is_none() {
                if let Poll::Ready(v) = a.as_mut().poll(&mut Context::from_waker(&wakers[0])) {
                    out_a = Some(v);
                }
            }
            if due & SECOND != 0 && out_b.is_none() {
                if let Poll::Ready(v) = b.as_mut().poll(&mut Context::from_waker(&wakers[1])) {
                    out_b = Some(v);
                }
            }
            if out_a.is_some() && out_b.is_some() {
                marks.state.store(0, Ordering::Release);
                if let (Some(a), Some(b)) = (out_a.take(), out_b.take()) {
                    return Poll::Ready((a, b));
                }
            }
            // Out of the poll, unless a half was woken meanwhile: then round again.
            if marks
                .state
                .compare_exchange(POLLING, 0, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                return Poll::Pending;
            }
        }
        // Still marked: out of the poll with the marks kept, and scheduled again.
        marks.state.fetch_and(!POLLING, Ordering::AcqRel);
        cx.waker().wake_by_ref();
        Poll::Pending
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::pin::pin;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Mutex;

    /// The task's waker, counting its wakes.
    #[derive(Default)]
    struct Task(AtomicUsize);

    impl Wake for Task {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// A half that counts its polls and waits until `open`; the waker it was last polled with
    /// is kept, for the test (or the other half) to wake.
    #[derive(Default)]
    struct Gate {
        polls: AtomicUsize,
        open: std::sync::atomic::AtomicBool,
        waker: Mutex<Option<Waker>>,
    }

    impl Gate {
        async fn wait(&self, out: u32) -> u32 {
            poll_fn(|cx| {
                self.polls.fetch_add(1, Ordering::SeqCst);
                if self.open.load(Ordering::SeqCst) {
                    return Poll::Ready(out);
                }
                *self.waker.lock().unwrap() = Some(cx.waker().clone());
                Poll::Pending
            })
            .await
        }

        fn open(&self) {
            self.open.store(true, Ordering::SeqCst);
            if let Some(w) = self.waker.lock().unwrap().take() {
                w.wake();
            }
        }

        fn polls(&self) -> usize {
            self.polls.load(Ordering::SeqCst)
        }
    }

    #[test]
    fn each_half_is_polled_only_when_it_was_woken() {
        let (a, b) = (Gate::default(), Gate::default());
        let task = Arc::new(Task::default());
        let waker = Waker::from(task.clone());
        let mut cx = Context::from_waker(&waker);
        let (wait_a, wait_b) = (pin!(a.wait(1)), pin!(b.wait(2)));
        let mut joined = pin!(both(wait_a, wait_b));
        assert!(joined.as_mut().poll(&mut cx).is_pending());
        assert_eq!((a.polls(), b.polls()), (1, 1));
        // The second half's wake: the task is woken, and only that half is polled.
        b.open();
        assert_eq!(task.0.load(Ordering::SeqCst), 1);
        assert!(joined.as_mut().poll(&mut cx).is_pending());
        assert_eq!((a.polls(), b.polls()), (1, 2));
        // A poll with nothing woken (a spurious one) polls neither.
        assert!(joined.as_mut().poll(&mut cx).is_pending());
        assert_eq!((a.polls(), b.polls()), (1, 2));
        a.open();
        assert_eq!(joined.as_mut().poll(&mut cx), Poll::Ready((1, 2)));
        assert_eq!((a.polls(), b.polls()), (2, 2));
    }

    #[test]
    fn a_wake_between_the_halves_inside_the_poll_is_taken_there() {
        // The first half opens the second's gate as it runs (a slot queued for the reply side):
        // the second half runs in the same poll, and the task is not scheduled again for it.
        let b = Gate::default();
        let task = Arc::new(Task::default());
        let waker = Waker::from(task.clone());
        let mut cx = Context::from_waker(&waker);
        let first = async {
            // Polled once before b waits: yield once so that b has registered its waker.
            let mut yielded = false;
            poll_fn(|cx| {
                if yielded {
                    return Poll::Ready(());
                }
                yielded = true;
                cx.waker().wake_by_ref();
                Poll::Pending
            })
            .await;
            b.open();
            std::future::pending::<()>().await;
        };
        let (first, wait_b) = (pin!(first), pin!(b.wait(2)));
        let mut joined = pin!(both(first, wait_b));
        assert!(joined.as_mut().poll(&mut cx).is_pending());
        // The first half's own wake and its opening of the second were both taken inside that
        // poll: the second half has finished, and the task was never woken.
        assert_eq!(b.polls(), 2);
        assert_eq!(task.0.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn halves_that_keep_waking_do_not_hold_the_thread() {
        let polls = AtomicUsize::new(0);
        let task = Arc::new(Task::default());
        let waker = Waker::from(task.clone());
        let mut cx = Context::from_waker(&waker);
        let restless = poll_fn(|cx| {
            polls.fetch_add(1, Ordering::SeqCst);
            cx.waker().wake_by_ref();
            Poll::<()>::Pending
        });
        let (restless, never) = (pin!(restless), pin!(std::future::pending::<()>()));
        let mut joined = pin!(both(restless, never));
        assert!(joined.as_mut().poll(&mut cx).is_pending());
        // A bounded number of rounds, then the task is scheduled again with the mark kept.
        assert_eq!(polls.load(Ordering::SeqCst), ROUNDS);
        assert_eq!(task.0.load(Ordering::SeqCst), 1);
        assert!(joined.as_mut().poll(&mut cx).is_pending());
        assert_eq!(polls.load(Ordering::SeqCst), 2 * ROUNDS);
    }
}

//! Striping: each thread keeps to one of a few slots, so hot shared data (the bearer header's
//! reference count, the request counter) is written by one core per cache line, not all of them.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

/// How many slots; a power of two.
pub(crate) const STRIPES: usize = 8;

static NEXT: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static STRIPE: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// This thread's slot, handed out round-robin on first use.
#[inline]
pub(crate) fn index() -> usize {
    STRIPE.with(|s| {
        let i = s.get();
        if i != usize::MAX {
            return i;
        }
        let i = NEXT.fetch_add(1, Relaxed) % STRIPES;
        s.set(i);
        i
    })
}

//! The process-wide bound on memory held for requests: heads, bodies and unsent answers.
//!
//! Every connection may hold [`ALLOWANCE`] bytes without asking (enough for any ordinary head,
//! so `/health` and the like are always read), and draws what it holds beyond that from one
//! shared [`Budget`]. A request that cannot draw what it needs is answered 503 with
//! `Retry-After` before more of it is read; one that has drawn its head and body is served.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Bytes every connection holds without drawing on the budget: at most
/// `server::MAX_CONNECTIONS` times this in all.
pub const ALLOWANCE: usize = 4 * 1024;
/// Bytes the whole process holds for requests beyond the connections' allowances: with the
/// allowances, the threads and the libraries, the service stays well under 64 MiB.
pub const MEMORY_BUDGET: usize = 16 * 1024 * 1024;

/// A count of bytes drawn against a fixed limit, shared by the I/O thread and the workers.
#[derive(Debug)]
pub struct Budget {
    used: AtomicUsize,
    limit: usize,
}

impl Budget {
    pub fn new(limit: usize) -> Budget {
        Budget {
            used: AtomicUsize::new(0),
            limit,
        }
    }

    /// Draws `n` bytes if they fit under the limit; `false` draws nothing.
    pub fn try_draw(&self, n: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(n).filter(|&total| total <= self.limit)
            })
            .is_ok()
    }

    /// Draws `n` bytes even past the limit: for an answer to a request already admitted, which
    /// is small and must be sent.
    pub fn draw(&self, n: usize) {
        self.used.fetch_add(n, Ordering::AcqRel);
    }

    pub fn give_back(&self, n: usize) {
        self.used.fetch_sub(n, Ordering::AcqRel);
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }
}

/// What one holder (a connection) has drawn: it follows the bytes the holder keeps, and gives
/// everything back when dropped, so no path can leak budget.
#[derive(Debug)]
pub struct Account {
    budget: std::sync::Arc<Budget>,
    drawn: usize,
}

impl Account {
    pub fn new(budget: std::sync::Arc<Budget>) -> Account {
        Account { budget, drawn: 0 }
    }

    /// Holds `bytes` in all from now on, if the budget has them: `false` changes nothing.
    pub fn try_hold(&mut self, bytes: usize) -> bool {
        let want = bytes.saturating_sub(ALLOWANCE);
        if want > self.drawn && !self.budget.try_draw(want - self.drawn) {
            return false;
        }
        self.settle(want);
        true
    }

    /// Holds `bytes` in all from now on, past the limit if need be.
    pub fn hold(&mut self, bytes: usize) {
        let want = bytes.saturating_sub(ALLOWANCE);
        if want > self.drawn {
            self.budget.draw(want - self.drawn);
        }
        self.settle(want);
    }

    fn settle(&mut self, want: usize) {
        if want < self.drawn {
            self.budget.give_back(self.drawn - want);
        }
        self.drawn = want;
    }
}

impl Drop for Account {
    fn drop(&mut self) {
        self.budget.give_back(self.drawn);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn accounts_draw_within_the_limit_and_give_back_on_drop() {
        let budget = Arc::new(Budget::new(10_000));
        let mut a = Account::new(budget.clone());
        // The allowance costs nothing.
        assert!(a.try_hold(ALLOWANCE));
        assert_eq!(budget.used(), 0);
        assert!(a.try_hold(ALLOWANCE + 6_000));
        assert_eq!(budget.used(), 6_000);
        let mut b = Account::new(budget.clone());
        assert!(!b.try_hold(ALLOWANCE + 5_000), "past the limit");
        assert_eq!(budget.used(), 6_000, "a refusal draws nothing");
        assert!(b.try_hold(ALLOWANCE + 4_000));
        assert_eq!(budget.used(), 10_000);
        // An answer is held even past the limit.
        b.hold(ALLOWANCE + 4_500);
        assert_eq!(budget.used(), 10_500);
        // Holding less gives back at once.
        a.try_hold(100);
        assert_eq!(budget.used(), 4_500);
        drop(b);
        assert_eq!(budget.used(), 0);
        drop(a);
        assert_eq!(budget.used(), 0);
    }
}

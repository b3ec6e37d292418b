//! Which models to try for one request, in which order.
//!
//! The router's ranking is the fallback order. Models whose context window is smaller
//! than the request's estimated tokens are never tried. Models whose breaker is open
//! (see [`super::cooldown`]) are skipped; if that leaves nothing, the best eligible model
//! is tried anyway (a request is never refused only because everything is cooling down).
//! At most `max_attempts` calls are made: a model's other deployments, tried after one
//! fails ([`AttemptPlan::take_one`]), count too. Pure logic: no I/O, no clock.

use super::cooldown::Admit;

/// Each model's context window in tokens (`None`: unknown, anything fits).
pub trait ContextWindows {
    fn window(&self, model: usize) -> Option<u64>;
}

impl ContextWindows for [Option<u64>] {
    fn window(&self, model: usize) -> Option<u64> {
        self.get(model).copied().flatten()
    }
}

impl<const N: usize> ContextWindows for [Option<u64>; N] {
    fn window(&self, model: usize) -> Option<u64> {
        self.as_slice().window(model)
    }
}

/// Models of `ranking` whose context window fits `needed_tokens`, in ranking order.
pub fn eligible(
    ranking: impl IntoIterator<Item = usize>,
    context_windows: &(impl ContextWindows + ?Sized),
    needed_tokens: u64,
) -> Vec<usize> {
    ranking
        .into_iter()
        .filter(|&m| context_windows.window(m).is_none_or(|w| w >= needed_tokens))
        .collect()
}

/// Walks the eligible models, asking the breaker of each whether it may be tried.
#[derive(Debug)]
pub struct AttemptPlan {
    candidates: Vec<usize>,
    next: usize,
    tried: u32,
    max_attempts: u32,
    forced: bool,
    /// Whether a candidate was handed out (tried, or passed over by the caller).
    offered: bool,
    /// Models skipped because their breaker was open.
    pub skipped: Vec<usize>,
}

impl AttemptPlan {
    pub fn new(candidates: Vec<usize>, max_attempts: u32) -> AttemptPlan {
        AttemptPlan {
            candidates,
            next: 0,
            tried: 0,
            max_attempts: max_attempts.max(1),
            forced: false,
            offered: false,
            skipped: Vec::new(),
        }
    }

    /// The next model to try and how it was admitted, or `None` when the attempts are
    /// spent or no candidate is left.
    pub fn next_attempt(
        &mut self,
        mut admit: impl FnMut(usize) -> Admit,
    ) -> Option<(usize, Admit)> {
        if self.tried >= self.max_attempts {
            return None;
        }
        while let Some(&m) = self.candidates.get(self.next) {
            self.next += 1;
            match admit(m) {
                Admit::No => self.skipped.push(m),
                a => {
                    self.tried += 1;
                    self.offered = true;
                    return Some((m, a));
                }
            }
        }
        // Everything eligible is cooling down and nothing was offered: try the best anyway
        // (not when a candidate was offered and passed over for its quota or budget).
        if !self.offered && !self.forced {
            self.forced = true;
            if let Some(&m) = self.candidates.first() {
                self.tried += 1;
                return Some((m, Admit::Yes));
            }
        }
        None
    }

    /// Gives back the attempt [`AttemptPlan::next_attempt`] just counted, when no call was
    /// made for it (the key's budget could not afford the model).
    pub fn refund(&mut self) {
        self.tried = self.tried.saturating_sub(1);
    }

    /// Counts one more attempt at the model just tried (another of its deployments), if
    /// attempts remain; false when they are spent.
    pub fn take_one(&mut self) -> bool {
        if self.tried >= self.max_attempts {
            return false;
        }
        self.tried += 1;
        true
    }

    /// Attempts made so far.
    pub fn tried(&self) -> u32 {
        self.tried
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_window_filters_but_keeps_order() {
        let w = [Some(100), None, Some(5000), Some(10)];
        assert_eq!(eligible([3, 2, 1, 0], &w, 50), vec![2, 1, 0]);
        assert_eq!(eligible([3, 2, 1, 0], &w, 6000), vec![1]);
    }

    #[test]
    fn bounded_by_max_attempts_and_skips_open_breakers() {
        let mut p = AttemptPlan::new(vec![4, 1, 2, 3], 2);
        let admit = |m: usize| if m == 1 { Admit::No } else { Admit::Yes };
        assert_eq!(p.next_attempt(admit), Some((4, Admit::Yes)));
        assert_eq!(p.next_attempt(admit), Some((2, Admit::Yes)));
        assert_eq!(p.next_attempt(admit), None);
        assert_eq!(p.skipped, vec![1]);
        assert_eq!(p.tried(), 2);
    }

    #[test]
    fn all_cooling_down_tries_the_best_once() {
        let mut p = AttemptPlan::new(vec![7, 8], 3);
        assert_eq!(p.next_attempt(|_| Admit::No), Some((7, Admit::Yes)));
        assert_eq!(p.next_attempt(|_| Admit::No), None);
        let mut empty = AttemptPlan::new(vec![], 3);
        assert_eq!(empty.next_attempt(|_| Admit::Yes), None);
    }
}

//! The byte budget of exports in flight: request bodies, their decompressed and decoded forms,
//! the mapped logs waiting for the writer and the write-ahead log's group buffer. An export
//! reserves what it holds as it goes and keeps the reservation until the writer is done with its
//! logs; when the budget is spent, exports are refused as overload instead of growing memory.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Budget granularity: reservations are counted in KiB, rounded up.
const UNIT: usize = 1024;

/// The shared budget; cheap to clone.
#[derive(Debug, Clone)]
pub struct MemoryBudget {
    units: Arc<Semaphore>,
    total_units: usize,
}

/// Bytes reserved by one export; returned to the budget when dropped.
#[derive(Debug)]
pub struct Reservation {
    permit: Option<OwnedSemaphorePermit>,
    budget: MemoryBudget,
}

fn units(bytes: usize) -> usize {
    bytes.div_ceil(UNIT)
}

impl MemoryBudget {
    /// A budget of `bytes`.
    pub fn new(bytes: usize) -> Self {
        let total_units = units(bytes).clamp(1, Semaphore::MAX_PERMITS);
        Self {
            units: Arc::new(Semaphore::new(total_units)),
            total_units,
        }
    }

    /// The most one stage of one export may hold: its decoded form, or its mapped logs with
    /// their write-ahead log frames. Half the budget each, so that one export at its peak (the
    /// decoded form while the logs are made) fits the whole budget; an export that needs more
    /// could never fit, and is refused as too large rather than as overload.
    pub fn stage_cap(&self) -> usize {
        self.total_units * UNIT / 2
    }

    /// An empty reservation to grow.
    pub fn reservation(&self) -> Reservation {
        Reservation {
            permit: None,
            budget: self.clone(),
        }
    }
}

/// The budget is spent: the export is refused as overload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the memory budget for exports in flight is spent")]
pub struct BudgetSpent;

impl Reservation {
    /// Holds at least `bytes`: reserves what is missing, at once or not at all.
    pub fn reserve_to(&mut self, bytes: usize) -> Result<(), BudgetSpent> {
        let missing = units(bytes).saturating_sub(self.units());
        if missing == 0 {
            return Ok(());
        }
        let missing = u32::try_from(missing).map_err(|_| BudgetSpent)?;
        let more = self
            .budget
            .units
            .clone()
            .try_acquire_many_owned(missing)
            .map_err(|_| BudgetSpent)?;
        match &mut self.permit {
            Some(permit) => permit.merge(more),
            None => self.permit = Some(more),
        }
        Ok(())
    }

    /// Holds at most `bytes`: gives the rest back to the budget.
    pub fn release_to(&mut self, bytes: usize) {
        let extra = self.units().saturating_sub(units(bytes));
        if let Some(permit) = &mut self.permit {
            drop(permit.split(extra));
        }
    }

    /// The most one stage of an export may hold (see [`MemoryBudget::stage_cap`]).
    pub fn stage_cap(&self) -> usize {
        self.budget.stage_cap()
    }

    /// Bytes reserved.
    pub fn bytes(&self) -> usize {
        self.units() * UNIT
    }

    fn units(&self) -> usize {
        self.permit.as_ref().map_or(0, |p| p.num_permits())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_hold_what_they_are_told_within_the_budget() {
        let budget = MemoryBudget::new(10 * UNIT);
        let mut first = budget.reservation();
        first.reserve_to(4 * UNIT).unwrap();
        // already held: nothing more
        first.reserve_to(3 * UNIT).unwrap();
        assert_eq!(first.bytes(), 4 * UNIT);
        first.reserve_to(4 * UNIT + 1).unwrap();
        assert_eq!(first.bytes(), 5 * UNIT);
        let mut second = budget.reservation();
        assert_eq!(second.reserve_to(6 * UNIT), Err(BudgetSpent));
        assert_eq!(second.bytes(), 0);
        second.reserve_to(5 * UNIT).unwrap();
        assert_eq!(budget.reservation().reserve_to(1), Err(BudgetSpent));

        second.release_to(2 * UNIT);
        assert_eq!(second.bytes(), 2 * UNIT);
        // released: another reservation takes it
        let mut third = budget.reservation();
        third.reserve_to(3 * UNIT).unwrap();
        assert_eq!(third.reserve_to(3 * UNIT + 1), Err(BudgetSpent));
        second.release_to(0);
        assert_eq!(second.bytes(), 0);
        drop(first);
        drop(third);
        let mut all = budget.reservation();
        all.reserve_to(10 * UNIT).unwrap();
        drop(all);
        assert_eq!(
            budget.reservation().reserve_to(usize::MAX),
            Err(BudgetSpent)
        );
        assert_eq!(budget.reservation().stage_cap(), 5 * UNIT);
    }
}

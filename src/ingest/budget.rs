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
        }
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
    /// Reserves `bytes` more, at once or not at all.
    pub fn grow(&mut self, bytes: usize) -> Result<(), BudgetSpent> {
        let wanted = units(bytes);
        if wanted == 0 {
            return Ok(());
        }
        let wanted = u32::try_from(wanted).map_err(|_| BudgetSpent)?;
        let more = self
            .budget
            .units
            .clone()
            .try_acquire_many_owned(wanted)
            .map_err(|_| BudgetSpent)?;
        match &mut self.permit {
            Some(permit) => permit.merge(more),
            None => self.permit = Some(more),
        }
        Ok(())
    }

    /// Bytes reserved.
    pub fn bytes(&self) -> usize {
        self.permit.as_ref().map_or(0, |p| p.num_permits()) * UNIT
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_grow_until_the_budget_is_spent_and_return_when_dropped() {
        let budget = MemoryBudget::new(10 * UNIT);
        let mut first = budget.reservation();
        first.grow(4 * UNIT).unwrap();
        first.grow(1).unwrap();
        assert_eq!(first.bytes(), 5 * UNIT);
        let mut second = budget.reservation();
        assert_eq!(second.grow(6 * UNIT), Err(BudgetSpent));
        assert_eq!(second.bytes(), 0);
        second.grow(5 * UNIT).unwrap();
        assert_eq!(budget.reservation().grow(1), Err(BudgetSpent));
        drop(second);
        let mut third = budget.reservation();
        third.grow(5 * UNIT).unwrap();
        assert_eq!(third.grow(1), Err(BudgetSpent));
        drop(first);
        drop(third);
        let mut all = budget.reservation();
        all.grow(10 * UNIT).unwrap();
        drop(all);
        assert_eq!(budget.reservation().grow(usize::MAX), Err(BudgetSpent));
    }
}

//! The prepaid ledger: append-only entries per reseller and currency.
//!
//! | entry | available | held |
//! |---|---|---|
//! | `credit` (admin top-up of the prepaid balance) | + amount | |
//! | `hold` (order accepted) | − amount | + amount |
//! | `capture` (order fulfilled) | | − amount |
//! | `release` (order failed) | + amount | − amount |
//! | `refund` (order cancelled) | + amount | |
//!
//! so, always: `available = credits − captures − open holds + refunds`. A hold needs
//! `available ≥ amount`: an order the balance cannot cover is refused and nothing is held.

use serde::{Deserialize, Serialize};
use ulid::Ulid;

use super::ids::{OrderId, ResellerId};

/// What an entry does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    /// Money added to the prepaid balance.
    Credit,
    /// Money reserved for an accepted order.
    Hold,
    /// A hold turned into a charge (order fulfilled).
    Capture,
    /// A hold given back (order failed).
    Release,
    /// A charge given back (order cancelled).
    Refund,
}

/// One ledger entry. Never updated or deleted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerEntry {
    /// Entry id (sorts by time).
    pub id: Ulid,
    /// Owner.
    pub reseller: ResellerId,
    /// What it does.
    pub kind: EntryKind,
    /// Amount in minor units, always positive.
    pub amount: i64,
    /// ISO 4217 currency.
    pub currency: String,
    /// The order it belongs to (all but credits).
    pub order: Option<OrderId>,
    /// A note (credits: the operator's reference).
    pub note: Option<String>,
    /// When, ms since the epoch.
    pub created_at_ms: u64,
}

/// The balance of one reseller in one currency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Balance {
    /// Spendable now.
    pub available: i64,
    /// Reserved by accepted, unfinished orders.
    pub held: i64,
}

/// Applying an entry would make the balance negative.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("insufficient balance: {available} available, {needed} needed")]
pub struct Insufficient {
    /// Available before the entry.
    pub available: i64,
    /// What the entry needed.
    pub needed: i64,
}

impl Balance {
    /// The balance after `entry`, or why it cannot apply.
    pub fn apply(self, kind: EntryKind, amount: i64) -> Result<Balance, Insufficient> {
        let mut b = self;
        match kind {
            EntryKind::Credit | EntryKind::Refund => b.available += amount,
            EntryKind::Hold => {
                if b.available < amount {
                    return Err(Insufficient {
                        available: b.available,
                        needed: amount,
                    });
                }
                b.available -= amount;
                b.held += amount;
            }
            EntryKind::Capture => b.held -= amount,
            EntryKind::Release => {
                b.held -= amount;
                b.available += amount;
            }
        }
        Ok(b)
    }
}

/// Running sums of a reseller's entries in one currency, in any order: the balance
/// they imply does not depend on the order entries are added in.
#[derive(Debug, Clone, Copy, Default)]
pub struct Totals {
    credits: i64,
    holds: i64,
    captures: i64,
    releases: i64,
    refunds: i64,
}

impl Totals {
    /// Count one entry.
    pub fn add(&mut self, e: &LedgerEntry) {
        let sum = match e.kind {
            EntryKind::Credit => &mut self.credits,
            EntryKind::Hold => &mut self.holds,
            EntryKind::Capture => &mut self.captures,
            EntryKind::Release => &mut self.releases,
            EntryKind::Refund => &mut self.refunds,
        };
        *sum += e.amount;
    }

    /// The balance the entries imply (the invariant's right-hand side).
    pub fn balance(&self) -> Balance {
        let open_holds = self.holds - self.captures - self.releases;
        Balance {
            available: self.credits - self.captures - open_holds + self.refunds,
            held: open_holds,
        }
    }
}

/// Recompute a balance from its entries (the invariant's right-hand side).
pub fn replay<'a>(entries: impl IntoIterator<Item = &'a LedgerEntry>) -> Balance {
    let mut totals = Totals::default();
    for e in entries {
        totals.add(e);
    }
    totals.balance()
}

impl LedgerEntry {
    /// The hold that accepts `order`. It has the order's id, which makes a reseller's
    /// holds its list of orders (`Store::accept_order` requires it).
    pub fn hold_for(reseller: ResellerId, order: OrderId, amount: i64, currency: &str) -> Self {
        let mut hold = LedgerEntry::new(reseller, EntryKind::Hold, amount, currency, Some(order));
        hold.id = order.0;
        hold
    }

    /// A new entry for now.
    pub fn new(
        reseller: ResellerId,
        kind: EntryKind,
        amount: i64,
        currency: &str,
        order: Option<OrderId>,
    ) -> LedgerEntry {
        LedgerEntry {
            id: Ulid::new(),
            reseller,
            kind,
            amount,
            currency: currency.to_string(),
            order,
            note: None,
            created_at_ms: super::gateway::now_ms(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use EntryKind::*;

    #[test]
    fn a_hold_the_balance_cannot_cover_is_refused() {
        let b = Balance::default().apply(Credit, 100).unwrap();
        assert_eq!(
            b.apply(Hold, 101),
            Err(Insufficient {
                available: 100,
                needed: 101
            })
        );
        assert_eq!(
            b.apply(Hold, 100).unwrap(),
            Balance {
                available: 0,
                held: 100
            }
        );
    }

    #[test]
    fn incremental_balance_equals_the_replayed_invariant() {
        let r = ResellerId::new();
        let o = Some(OrderId::new());
        let seq = [
            (Credit, 1000),
            (Hold, 300),
            (Capture, 300),
            (Hold, 200),
            (Release, 200),
            (Hold, 100),
            (Refund, 300),
        ];
        let mut b = Balance::default();
        let mut entries = Vec::new();
        for (k, a) in seq {
            b = b.apply(k, a).unwrap();
            entries.push(LedgerEntry::new(r, k, a, "USD", o));
        }
        assert_eq!(b, replay(&entries));
        assert_eq!(
            b,
            Balance {
                available: 1000 - 300 - 100 + 300,
                held: 100
            }
        );
    }
}

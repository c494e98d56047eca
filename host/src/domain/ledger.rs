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
//! Every sum is checked: an entry that would take a balance past what an `i64` holds is
//! refused, never wrapped or saturated.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};
use ulid::Ulid;

use super::ids::{OrderId, ResellerId};

/// What an entry does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
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

/// Why an entry cannot apply to a balance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// A hold the available balance cannot cover.
    #[error("insufficient balance: {available} available, {needed} needed")]
    Insufficient {
        /// Available before the entry.
        available: i64,
        /// What the entry needed.
        needed: i64,
    },
    /// The entry would take a sum out of range (or its amount is negative).
    #[error("the amount would take the balance out of the range the ledger can hold")]
    OutOfRange,
}

/// `a + b`, refused out of range.
fn add(a: i64, b: i64) -> Result<i64, Refused> {
    a.checked_add(b).ok_or(Refused::OutOfRange)
}

/// `a - b`, refused out of range.
fn sub(a: i64, b: i64) -> Result<i64, Refused> {
    a.checked_sub(b).ok_or(Refused::OutOfRange)
}

impl Balance {
    /// The balance after `entry`, or why it cannot apply.
    pub fn apply(self, kind: EntryKind, amount: i64) -> Result<Balance, Refused> {
        if amount < 0 {
            return Err(Refused::OutOfRange);
        }
        let Balance { available, held } = self;
        Ok(match kind {
            EntryKind::Credit | EntryKind::Refund => Balance {
                available: add(available, amount)?,
                held,
            },
            EntryKind::Hold => {
                if available < amount {
                    return Err(Refused::Insufficient {
                        available,
                        needed: amount,
                    });
                }
                Balance {
                    available: sub(available, amount)?,
                    held: add(held, amount)?,
                }
            }
            EntryKind::Capture => Balance {
                available,
                held: sub(held, amount)?,
            },
            EntryKind::Release => Balance {
                available: add(available, amount)?,
                held: sub(held, amount)?,
            },
        })
    }
}

/// What the ledger implies, kept in memory by a store: every balance, and the orders
/// whose hold is neither captured nor released. One rule for both, whatever the store.
#[derive(Debug, Clone, Default)]
pub struct Books {
    balances: HashMap<(ResellerId, String), Balance>,
    open: HashSet<OrderId>,
}

impl Books {
    /// Books with these balances and open orders (a checkpoint, or a replayed ledger).
    pub fn new(
        balances: impl IntoIterator<Item = ((ResellerId, String), Balance)>,
        open: impl IntoIterator<Item = OrderId>,
    ) -> Books {
        Books {
            balances: balances.into_iter().collect(),
            open: open.into_iter().collect(),
        }
    }

    /// Check `entry` against its balance and, if it applies, count it. Returns the
    /// balance before and after, or why it cannot apply (then nothing changed).
    pub fn post(&mut self, entry: &LedgerEntry) -> Result<(Balance, Balance), Refused> {
        let key = (entry.reseller, entry.currency.clone());
        let before = self.balances.get(&key).copied().unwrap_or_default();
        let after = before.apply(entry.kind, entry.amount)?;
        self.balances.insert(key, after);
        self.track(entry, true);
        Ok((before, after))
    }

    /// Take back an entry [`Books::post`] counted as `before` -> `after` (its write
    /// failed), leaving what other entries did meanwhile.
    pub fn withdraw(&mut self, entry: &LedgerEntry, before: Balance, after: Balance) {
        let b = self
            .balances
            .entry((entry.reseller, entry.currency.clone()))
            .or_default();
        let undone = (after.available.checked_sub(before.available))
            .and_then(|d| b.available.checked_sub(d))
            .zip((after.held.checked_sub(before.held)).and_then(|d| b.held.checked_sub(d)));
        if let Some((available, held)) = undone {
            *b = Balance { available, held };
        }
        self.track(entry, false);
    }

    /// Keep the set of open orders in step with an entry (`posted`) or its withdrawal.
    fn track(&mut self, entry: &LedgerEntry, posted: bool) {
        let Some(id) = entry.order else { return };
        let opens = match entry.kind {
            EntryKind::Hold => true,
            EntryKind::Capture | EntryKind::Release => false,
            EntryKind::Credit | EntryKind::Refund => return,
        };
        if opens == posted {
            self.open.insert(id);
        } else {
            self.open.remove(&id);
        }
    }

    /// A reseller's balance in a currency.
    pub fn balance(&self, reseller: ResellerId, currency: &str) -> Balance {
        self.balances
            .get(&(reseller, currency.to_string()))
            .copied()
            .unwrap_or_default()
    }

    /// A reseller's balances, by currency.
    /// Drop a reseller's balances (its account and ledger are deleted).
    pub fn forget(&mut self, reseller: ResellerId) {
        self.balances.retain(|(r, _), _| *r != reseller);
    }

    /// A reseller's balances, by currency.
    pub fn balances_of(&self, reseller: ResellerId) -> Vec<(String, Balance)> {
        let mut out: Vec<(String, Balance)> = self
            .balances
            .iter()
            .filter(|((r, _), _)| *r == reseller)
            .map(|((_, c), b)| (c.clone(), *b))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Every balance (for a checkpoint).
    pub fn balances(&self) -> impl Iterator<Item = (&(ResellerId, String), &Balance)> {
        self.balances.iter()
    }

    /// The orders holding money.
    pub fn open_orders(&self) -> impl Iterator<Item = OrderId> + '_ {
        self.open.iter().copied()
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
    pub fn add(&mut self, e: &LedgerEntry) -> Result<(), Refused> {
        let sum = match e.kind {
            EntryKind::Credit => &mut self.credits,
            EntryKind::Hold => &mut self.holds,
            EntryKind::Capture => &mut self.captures,
            EntryKind::Release => &mut self.releases,
            EntryKind::Refund => &mut self.refunds,
        };
        *sum = add(*sum, e.amount)?;
        Ok(())
    }

    /// The balance `base` becomes once these entries are added to it: a checkpoint's
    /// balance and the entries written after it (in any order, unlike [`Balance::apply`],
    /// which checks each hold against what is available when it comes).
    pub fn after(&self, base: Balance) -> Result<Balance, Refused> {
        let gained = add(add(self.credits, self.releases)?, self.refunds)?;
        let opened = sub(sub(self.holds, self.captures)?, self.releases)?;
        Ok(Balance {
            available: sub(add(base.available, gained)?, self.holds)?,
            held: add(base.held, opened)?,
        })
    }

    /// The balance the entries imply (the invariant's right-hand side).
    pub fn balance(&self) -> Result<Balance, Refused> {
        let open_holds = sub(sub(self.holds, self.captures)?, self.releases)?;
        Ok(Balance {
            available: add(
                sub(sub(self.credits, self.captures)?, open_holds)?,
                self.refunds,
            )?,
            held: open_holds,
        })
    }
}

/// Recompute a balance from its entries (the invariant's right-hand side).
pub fn replay<'a>(entries: impl IntoIterator<Item = &'a LedgerEntry>) -> Result<Balance, Refused> {
    let mut totals = Totals::default();
    for e in entries {
        totals.add(e)?;
    }
    totals.balance()
}

impl LedgerEntry {
    /// The hold that accepts `order`. It has the order's id, so whatever an idempotent
    /// request created is found by that one id (`Commit::accept` builds it).
    pub fn hold_for(
        reseller: ResellerId,
        order: OrderId,
        amount: i64,
        currency: &str,
        at_ms: u64,
    ) -> Self {
        let mut hold = LedgerEntry::new(
            reseller,
            EntryKind::Hold,
            amount,
            currency,
            Some(order),
            at_ms,
        );
        hold.id = order.0;
        hold
    }

    /// A new entry, dated `at_ms`.
    pub fn new(
        reseller: ResellerId,
        kind: EntryKind,
        amount: i64,
        currency: &str,
        order: Option<OrderId>,
        at_ms: u64,
    ) -> LedgerEntry {
        LedgerEntry {
            id: Ulid::new(),
            reseller,
            kind,
            amount,
            currency: currency.to_string(),
            order,
            note: None,
            created_at_ms: at_ms,
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
            Err(Refused::Insufficient {
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

    /// A credit, an order captured, one released, one still held and a refund.
    const WALK: [(EntryKind, i64); 7] = [
        (Credit, 1000),
        (Hold, 300),
        (Capture, 300),
        (Hold, 200),
        (Release, 200),
        (Hold, 100),
        (Refund, 300),
    ];

    #[test]
    fn incremental_balance_equals_the_replayed_invariant() {
        let r = ResellerId::new();
        let o = Some(OrderId::new());
        let mut b = Balance::default();
        let mut entries = Vec::new();
        for (k, a) in WALK {
            b = b.apply(k, a).unwrap();
            entries.push(LedgerEntry::new(r, k, a, "USD", o, 0));
        }
        assert_eq!(b, replay(&entries).unwrap());
        assert_eq!(
            b,
            Balance {
                available: 1000 - 300 - 100 + 300,
                held: 100
            }
        );
    }

    #[test]
    fn a_checkpoint_plus_the_entries_after_it_is_the_whole_ledger_whatever_their_order() {
        let r = ResellerId::new();
        let o = Some(OrderId::new());
        let entries: Vec<_> = WALK
            .iter()
            .chain(&[(Credit, 5)])
            .map(|&(k, a)| LedgerEntry::new(r, k, a, "USD", o, 0))
            .collect();
        let whole = replay(&entries).unwrap();
        for split in 0..=entries.len() {
            let checkpoint = replay(&entries[..split]).unwrap();
            let mut tail = Totals::default();
            // The tail is read in key order, not the order it was written in.
            for e in entries[split..].iter().rev() {
                tail.add(e).unwrap();
            }
            assert_eq!(tail.after(checkpoint).unwrap(), whole, "split at {split}");
        }
    }

    #[test]
    fn a_credit_that_would_overflow_the_balance_is_refused_not_wrapped() {
        let b = Balance::default().apply(Credit, i64::MAX).unwrap();
        assert_eq!(b.apply(Credit, 1), Err(Refused::OutOfRange));
        assert_eq!(b.apply(Refund, i64::MAX), Err(Refused::OutOfRange));
        let held = b.apply(Hold, i64::MAX).unwrap();
        assert_eq!(
            held.apply(Credit, 1).unwrap().apply(Hold, 1),
            Err(Refused::OutOfRange),
            "held cannot pass i64::MAX either"
        );
        assert_eq!(
            Balance::default().apply(Credit, -1),
            Err(Refused::OutOfRange)
        );
    }

    #[test]
    fn replayed_totals_that_overflow_are_an_error() {
        let r = ResellerId::new();
        let entries = [
            LedgerEntry::new(r, Credit, i64::MAX, "USD", None, 0),
            LedgerEntry::new(r, Credit, 1, "USD", None, 0),
        ];
        assert_eq!(replay(&entries), Err(Refused::OutOfRange));
    }

    #[test]
    fn books_track_balances_and_open_orders_and_take_back_a_withdrawn_entry() {
        let r = ResellerId::new();
        let order = OrderId::new();
        let mut books = Books::default();
        books
            .post(&LedgerEntry::new(r, Credit, 1_000, "USD", None, 0))
            .unwrap();
        let hold = LedgerEntry::new(r, Hold, 300, "USD", Some(order), 0);
        let (before, after) = books.post(&hold).unwrap();
        assert_eq!(books.open_orders().collect::<Vec<_>>(), vec![order]);
        // Another entry lands meanwhile; withdrawing the hold leaves it counted.
        books
            .post(&LedgerEntry::new(r, Credit, 50, "USD", None, 0))
            .unwrap();
        books.withdraw(&hold, before, after);
        assert_eq!(
            books.balance(r, "USD"),
            Balance {
                available: 1_050,
                held: 0
            }
        );
        assert_eq!(books.open_orders().count(), 0);
        assert_eq!(
            books.post(&LedgerEntry::new(r, Hold, 5_000, "USD", Some(order), 0)),
            Err(Refused::Insufficient {
                available: 1_050,
                needed: 5_000
            })
        );
        assert_eq!(
            books.balances_of(r),
            vec![("USD".to_string(), books.balance(r, "USD"))]
        );
    }
}

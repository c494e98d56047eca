//! Ledger checkpoints: the books (every balance, the orders holding money) as they were
//! when a store last wrote them down, so that opening after a crash reads the ledger
//! entries written since then, not every entry ever written. Without one, the time to
//! start grows with years of transactions.
//!
//! A checkpoint is one record, written in one insert: it is either all there or not at
//! all. It names the *epoch* from which entries are not in it; a store notes each entry
//! under the epoch it was written in, and opening rebuilds the books from the checkpoint
//! and the entries noted from that epoch on ([`Rebuild`]). Entries are added up in the
//! order they are read, not the order they were written, so the rebuild uses sums, not
//! [`Balance::apply`]'s running checks.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::domain::ids::{OrderId, ResellerId};
use crate::domain::ledger::{Balance, Books, EntryKind, LedgerEntry, Totals};
use crate::domain::store::StoreError;

/// The books as of every entry noted before epoch `since`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerCheckpoint {
    /// The first epoch whose entries it does not hold.
    pub since: u64,
    /// Every balance, by reseller and currency.
    pub balances: Vec<(ResellerId, String, Balance)>,
    /// The orders whose hold is neither captured nor released.
    pub open: Vec<OrderId>,
}

impl LedgerCheckpoint {
    /// The checkpoint of `books`, missing the entries of epoch `since` and later.
    pub fn of(books: &Books, since: u64) -> LedgerCheckpoint {
        LedgerCheckpoint {
            since,
            balances: books
                .balances()
                .map(|((r, c), b)| (*r, c.clone(), *b))
                .collect(),
            open: books.open_orders().collect(),
        }
    }

    /// As stored: a version byte, then postcard.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_extend(self, vec![CHECKPOINT_V1]).expect("checkpoints serialise")
    }

    /// Read a stored checkpoint.
    pub fn decode(bytes: &[u8]) -> Result<LedgerCheckpoint, StoreError> {
        match bytes.split_first() {
            Some((&CHECKPOINT_V1, rest)) => postcard::from_bytes(rest)
                .map_err(|e| StoreError::Decode(format!("ledger checkpoint: {e}"))),
            _ => Err(StoreError::Decode(
                "ledger checkpoint of an unknown version".into(),
            )),
        }
    }
}

const CHECKPOINT_V1: u8 = 1;

/// Books being rebuilt: a checkpoint (or nothing: the whole ledger follows), and entries
/// added in any order.
#[derive(Default)]
pub struct Rebuild {
    totals: HashMap<(ResellerId, String), Totals>,
    /// Holds minus captures and releases, per order, on top of the checkpoint's.
    holding: HashMap<OrderId, i32>,
    entries: usize,
}

impl Rebuild {
    /// Count one entry.
    pub fn add(&mut self, e: &LedgerEntry) -> Result<(), StoreError> {
        self.totals
            .entry((e.reseller, e.currency.clone()))
            .or_default()
            .add(e)
            .map_err(|r| {
                StoreError::Decode(format!(
                    "ledger entry {} takes a sum out of range: {r}",
                    e.id
                ))
            })?;
        if let Some(order) = e.order {
            let delta = match e.kind {
                EntryKind::Hold => 1,
                EntryKind::Capture | EntryKind::Release => -1,
                EntryKind::Credit | EntryKind::Refund => 0,
            };
            *self.holding.entry(order).or_default() += delta;
        }
        self.entries += 1;
        Ok(())
    }

    /// How many entries were added.
    pub fn entries(&self) -> usize {
        self.entries
    }

    /// The books: `base`'s, moved on by every entry added. Balances of resellers for
    /// whom `has_ledger` says no are dropped (their account was deleted after the
    /// checkpoint: a ledger with no entries has no balance).
    pub fn books(
        mut self,
        base: Option<LedgerCheckpoint>,
        has_ledger: impl Fn(ResellerId) -> Result<bool, StoreError>,
    ) -> Result<Books, StoreError> {
        let mut balances: HashMap<(ResellerId, String), Balance> = HashMap::new();
        if let Some(base) = base {
            for (reseller, currency, balance) in base.balances {
                balances.insert((reseller, currency), balance);
            }
            for order in base.open {
                *self.holding.entry(order).or_default() += 1;
            }
        }
        for ((reseller, currency), totals) in self.totals {
            let base = balances
                .get(&(reseller, currency.clone()))
                .copied()
                .unwrap_or_default();
            let balance = totals.after(base).map_err(|r| {
                StoreError::Decode(format!(
                    "the ledger of reseller {reseller} in {currency} does not add up: {r}"
                ))
            })?;
            balances.insert((reseller, currency), balance);
        }
        let mut kept = HashMap::with_capacity(balances.len());
        let mut known: HashMap<ResellerId, bool> = HashMap::new();
        for ((reseller, currency), balance) in balances {
            let exists = match known.get(&reseller) {
                Some(e) => *e,
                None => *known.entry(reseller).or_insert(has_ledger(reseller)?),
            };
            if exists {
                kept.insert((reseller, currency), balance);
            }
        }
        Ok(Books::new(
            kept,
            self.holding
                .into_iter()
                .filter(|(_, n)| *n > 0)
                .map(|(id, _)| id),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ledger::EntryKind::*;

    fn entry(r: ResellerId, kind: EntryKind, amount: i64, order: Option<OrderId>) -> LedgerEntry {
        LedgerEntry::new(r, kind, amount, "USD", order, 0)
    }

    #[test]
    fn books_rebuilt_from_a_checkpoint_and_the_tail_equal_books_rebuilt_from_everything() {
        let r = ResellerId::new();
        let (a, b, c) = (OrderId::new(), OrderId::new(), OrderId::new());
        let all = [
            entry(r, Credit, 1_000, None),
            entry(r, Hold, 300, Some(a)),
            entry(r, Hold, 200, Some(b)),
            entry(r, Capture, 300, Some(a)),
            entry(r, Hold, 100, Some(c)),
            entry(r, Release, 200, Some(b)),
            entry(r, Refund, 300, Some(a)),
        ];
        let yes = |_| Ok(true);
        let mut whole = Rebuild::default();
        for e in &all {
            whole.add(e).unwrap();
        }
        let whole = whole.books(None, yes).unwrap();
        for split in 0..=all.len() {
            let mut head = Rebuild::default();
            for e in &all[..split] {
                head.add(e).unwrap();
            }
            let checkpoint = LedgerCheckpoint::of(&head.books(None, yes).unwrap(), 7);
            let checkpoint = LedgerCheckpoint::decode(&checkpoint.encode()).unwrap();
            let mut tail = Rebuild::default();
            for e in all[split..].iter().rev() {
                tail.add(e).unwrap();
            }
            let books = tail.books(Some(checkpoint), yes).unwrap();
            assert_eq!(books.balance(r, "USD"), whole.balance(r, "USD"), "{split}");
            assert_eq!(books.open_orders().collect::<Vec<_>>(), vec![c], "{split}");
        }
    }

    #[test]
    fn a_deleted_account_is_not_brought_back_by_an_older_checkpoint() {
        let (gone, kept) = (ResellerId::new(), ResellerId::new());
        let mut books = Rebuild::default();
        books.add(&entry(gone, Credit, 5, None)).unwrap();
        books.add(&entry(kept, Credit, 7, None)).unwrap();
        let checkpoint = LedgerCheckpoint::of(&books.books(None, |_| Ok(true)).unwrap(), 1);
        let books = Rebuild::default()
            .books(Some(checkpoint), |r| Ok(r == kept))
            .unwrap();
        assert_eq!(books.balances_of(gone), vec![]);
        assert_eq!(books.balance(kept, "USD").available, 7);
    }

    #[test]
    fn an_unreadable_checkpoint_is_an_error_not_a_guess() {
        assert!(LedgerCheckpoint::decode(b"").is_err());
        assert!(LedgerCheckpoint::decode(&[9, 1, 2]).is_err());
        assert!(LedgerCheckpoint::decode(&[CHECKPOINT_V1, 0xff]).is_err());
    }
}

//! Accounts: the first start's keys, resellers, API keys (create, rotate, revoke,
//! authenticate) and the prepaid balance (credits, balances, the ledger's pages).

use crate::domain::accounts::{self, ApiKey, KeyMode, Reseller, Role};
use crate::domain::gateway::{DomainError, Gateway, Principal};
use crate::domain::ids::{KeyId, ResellerId};
use crate::domain::ledger::{Balance, EntryKind, LedgerEntry};
use crate::domain::store::{Commit, Page, Rejected};

/// Keys minted on first start, shown once.
#[derive(Debug)]
pub struct BootstrapKeys {
    /// An admin key.
    pub admin: String,
    /// A demo reseller's test key, when demo mode is on.
    pub demo: Option<(ResellerId, String)>,
}

/// The largest `balance.low` threshold accepted: as large as any price the catalog takes.
const MAX_ALERT_MINOR: i64 = 1_000_000_000_000;

impl Gateway {
    /// On the first start of an empty store, mint an admin key and (in demo mode) a demo
    /// reseller with a test key and some credit. Later starts return `None`: keys are
    /// shown once.
    pub async fn bootstrap(&self, demo: bool) -> Result<Option<BootstrapKeys>, DomainError> {
        const MARKER: &str = "bootstrapped";
        if self.store.meta(MARKER).await?.is_some() {
            return Ok(None);
        }
        let (admin, _) = self.create_key(None, Role::Admin, KeyMode::Live).await?;
        let demo = if demo {
            let reseller = self.create_reseller("Demo Reseller", 1500).await?;
            let (key, _) = self
                .create_key(Some(reseller.id), Role::Reseller, KeyMode::Test)
                .await?;
            // The demo key is a test key: the credit goes to the test account it spends.
            self.credit(
                reseller.id,
                KeyMode::Test,
                self.tuning.demo_credit_minor,
                "USD",
                Some("demo credit".into()),
                ulid::Ulid::new(),
            )
            .await?;
            Some((reseller.id, key))
        } else {
            None
        };
        self.store.put_meta(MARKER, b"1").await?;
        self.store.durable().await?;
        Ok(Some(BootstrapKeys { admin, demo }))
    }

    /// Create a reseller account.
    pub async fn create_reseller(
        &self,
        name: &str,
        markup_bps: u32,
    ) -> Result<Reseller, DomainError> {
        let name = name.trim();
        if name.is_empty() || name.len() > 200 || name.chars().any(char::is_control) {
            return Err(DomainError::Invalid {
                field: "/name",
                message: "must be 1 to 200 printable characters".into(),
            });
        }
        if markup_bps > 100_000 {
            return Err(DomainError::Invalid {
                field: "/markup_bps",
                message: "must be 0 to 100000 (0% to 1000%)".into(),
            });
        }
        let reseller = Reseller {
            id: ResellerId::new(),
            name: name.to_string(),
            markup_bps,
            created_at_ms: self.clock.now_ms(),
            low_balance_alerts: Default::default(),
            test_low_balance_alerts: Default::default(),
            closed_at_ms: None,
        };
        self.store.put_reseller(&reseller).await?;
        Ok(reseller)
    }

    /// Mint and store a key; returns the key string (shown once) and its record.
    pub async fn create_key(
        &self,
        reseller: Option<ResellerId>,
        role: Role,
        mode: KeyMode,
    ) -> Result<(String, ApiKey), DomainError> {
        if (role == Role::Admin) != reseller.is_none() {
            return Err(DomainError::Invalid {
                field: "/role",
                message: "admin keys belong to no reseller; reseller keys belong to one".into(),
            });
        }
        if let Some(r) = reseller {
            self.store
                .reseller(r)
                .await?
                .ok_or(DomainError::NotFound("reseller"))?;
        }
        let key = accounts::mint_key(mode, &self.rng);
        let record = ApiKey {
            id: KeyId::new(),
            reseller,
            role,
            mode,
            hash: self.keyring.hash_key(&key),
            hint: accounts::key_hint(&key),
            created_at_ms: self.clock.now_ms(),
            expires_at_ms: None,
        };
        self.store.put_api_key(&record).await?;
        Ok((key, record))
    }

    /// Revoke a key now.
    pub async fn revoke_key(&self, id: KeyId) -> Result<ApiKey, DomainError> {
        let mut key = self
            .store
            .api_key_by_id(id)
            .await?
            .ok_or(DomainError::NotFound("key"))?;
        let now = self.clock.now_ms();
        key.expires_at_ms = Some(key.expires_at_ms.map_or(now, |t| t.min(now)));
        self.store.put_api_key(&key).await?;
        Ok(key)
    }

    /// Replace the caller's key: a new key with the same role, the old one working for
    /// the grace period so deployments can switch without downtime.
    pub async fn rotate_key(&self, who: &Principal) -> Result<(String, ApiKey), DomainError> {
        let mut old = self
            .store
            .api_key_by_id(who.key)
            .await?
            .ok_or(DomainError::Unauthenticated)?;
        let (key, record) = self.create_key(old.reseller, old.role, old.mode).await?;
        let grace_end = self.clock.now_ms() + self.tuning.rotation_grace.as_millis() as u64;
        old.expires_at_ms = Some(old.expires_at_ms.map_or(grace_end, |t| t.min(grace_end)));
        self.store.put_api_key(&old).await?;
        Ok((key, record))
    }

    /// Set (or, with `None`, remove) the caller's `balance.low` threshold in `currency`:
    /// an order whose hold takes the available balance from it or above to below it
    /// raises the event, in the same commit as the hold.
    pub async fn set_low_balance_alert(
        &self,
        who: &Principal,
        currency: &str,
        below_minor: Option<i64>,
    ) -> Result<Reseller, DomainError> {
        if !who.role.can_write() {
            return Err(DomainError::Forbidden);
        }
        if !crate::domain::supplier::is_currency(currency) {
            return Err(DomainError::NotFound("currency"));
        }
        if below_minor.is_some_and(|b| !(1..=MAX_ALERT_MINOR).contains(&b)) {
            return Err(DomainError::Invalid {
                field: "/below_minor",
                message: format!("must be 1 to {MAX_ALERT_MINOR} minor units"),
            });
        }
        let mut reseller = self.stored_reseller_of(who).await?;
        let alerts = match who.mode {
            KeyMode::Live => &mut reseller.low_balance_alerts,
            KeyMode::Test => &mut reseller.test_low_balance_alerts,
        };
        match below_minor {
            Some(b) => alerts.insert(currency.to_string(), b),
            None => alerts.remove(currency),
        };
        self.store.put_reseller(&reseller).await?;
        self.reseller_of(who).await
    }

    /// Add money to a reseller's prepaid balance in `mode` (its live account, or its test
    /// account that test keys spend), as ledger entry `entry_id` (under an idempotency
    /// key, the id the key was claimed with: a retry after a crash then finds the credit
    /// instead of posting it again).
    pub async fn credit(
        &self,
        reseller: ResellerId,
        mode: KeyMode,
        amount: i64,
        currency: &str,
        note: Option<String>,
        entry_id: ulid::Ulid,
    ) -> Result<Balance, DomainError> {
        if amount <= 0 {
            return Err(DomainError::Invalid {
                field: "/amount",
                message: "must be a positive amount in minor units".into(),
            });
        }
        if !crate::domain::supplier::is_currency(currency) {
            return Err(DomainError::Invalid {
                field: "/currency",
                message: "must be an ISO 4217 code such as USD".into(),
            });
        }
        self.store
            .reseller(reseller)
            .await?
            .ok_or(DomainError::NotFound("reseller"))?;
        let mut entry = LedgerEntry::new(
            mode.account(reseller),
            EntryKind::Credit,
            amount,
            currency,
            None,
            self.clock.now_ms(),
        );
        entry.id = entry_id;
        entry.note = note;
        match self.store.commit(&Commit::credit(entry)).await? {
            Ok(balance) => Ok(balance.expect("a credit moves money")),
            Err(Rejected::Refused(refused)) => {
                Err(DomainError::refused(refused, "/amount", currency.into()))
            }
            Err(Rejected::IccidTaken(_)) => unreachable!("a credit delivers no eSIM"),
        }
    }

    /// A credit posted earlier to `account` (a reseller's live or test account) as ledger
    /// entry `entry_id` (replaying its idempotency key), with the balance of its currency
    /// as it is now.
    pub async fn posted_credit(
        &self,
        account: ResellerId,
        entry_id: ulid::Ulid,
    ) -> Result<(LedgerEntry, Balance), DomainError> {
        let entry = self
            .store
            .ledger_entry(account, entry_id)
            .await?
            .filter(|e| e.kind == EntryKind::Credit)
            .ok_or(DomainError::NotFound("credit"))?;
        let balance = self.store.balance(account, &entry.currency).await?;
        Ok((entry, balance))
    }

    /// Close reseller `id`'s account (admin): its keys stop working at once, and its
    /// account data are deleted when the retention period after closure is over. An
    /// account with orders still open is not closed. Idempotent.
    pub async fn close_reseller(&self, id: ResellerId) -> Result<Reseller, DomainError> {
        let mut reseller = self
            .store
            .reseller(id)
            .await?
            .ok_or(DomainError::NotFound("reseller"))?;
        if reseller.closed_at_ms.is_some() {
            return Ok(reseller);
        }
        if self
            .store
            .open_orders()
            .await?
            .iter()
            .any(|o| o.reseller == id || o.reseller == KeyMode::Test.account(id))
        {
            return Err(DomainError::Conflict {
                code: "reseller_has_open_orders",
                message: "the account has orders still in progress; close it once they settle"
                    .into(),
            });
        }
        reseller.closed_at_ms = Some(self.clock.now_ms());
        self.store.put_reseller(&reseller).await?;
        self.store.durable().await?;
        Ok(reseller)
    }

    /// Who holds this bearer key. The lookup is by keyed hash (HMAC under the pepper), so
    /// the secret itself is never compared: only an equal hash finds a record.
    pub async fn authenticate(&self, key: &str) -> Result<Principal, DomainError> {
        accounts::check_key_format(key).ok_or(DomainError::Unauthenticated)?;
        let record = self
            .store
            .api_key(&self.keyring.hash_key(key))
            .await?
            .filter(|k| k.is_active(self.clock.now_ms()))
            .ok_or(DomainError::Unauthenticated)?;
        if let Some(reseller) = record.reseller {
            // A closed account's keys stop working with it.
            let open = self.store.reseller(reseller).await?;
            if open.is_none_or(|r| r.closed_at_ms.is_some()) {
                return Err(DomainError::Unauthenticated);
            }
        }
        Ok(Principal {
            key: record.id,
            role: record.role,
            reseller: record.reseller.map(|r| record.mode.account(r)),
            mode: record.mode,
        })
    }

    /// The caller's balances.
    pub async fn balances(&self, who: &Principal) -> Result<Vec<(String, Balance)>, DomainError> {
        let reseller = self.reseller_of(who).await?;
        Ok(self.store.balances(reseller.id).await?)
    }

    /// The caller's ledger entries, newest first.
    pub async fn transactions(
        &self,
        who: &Principal,
        before: Option<ulid::Ulid>,
        limit: usize,
    ) -> Result<Page<LedgerEntry>, DomainError> {
        let reseller = self.reseller_of(who).await?;
        Ok(self.store.ledger_page(reseller.id, before, limit).await?)
    }
}

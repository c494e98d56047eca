//! Orders: place (hold, persist, fulfil, wait briefly), read, list, top up, cancel
//! (refund), and the idempotency keys that make the POSTs safe to retry.

use serde::Serialize;

use crate::domain::ekyc::EkycSessionView;
use crate::domain::gateway::{DomainError, Gateway, Principal};
use crate::domain::idempotency::{self, Claim, IdemKey, IdemState};
use crate::domain::ids::{OrderId, ResellerId};
use crate::domain::ledger::EntryKind;
use crate::domain::orders::{EsimRecord, Order, OrderFailure, OrderKind, OrderSpec, OrderStatus};
use crate::domain::personal::Personal;
use crate::domain::store::{Commit, Page, Rejected, StoreError};
use crate::domain::supplier::{Feature, Money, ProfileState};

use super::catalog::unit_price;
use super::esims::EsimView;

/// A new order as a reseller asks for it.
#[derive(Debug, Clone)]
pub struct NewOrder {
    /// Gateway product id.
    pub product_id: String,
    /// eSIMs to order.
    pub quantity: u32,
    /// Optional opaque subject reference (never sent to a supplier).
    pub subject_ref: Option<String>,
    /// Optional metadata (never sent to a supplier).
    pub metadata: Option<serde_json::Value>,
}

/// An order as a reseller sees it: its own type, not the stored record (which carries
/// the plugin, the supplier's reference, retry bookkeeping and sealed fields).
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
#[schemars(rename = "Order")]
pub struct OrderView {
    /// Id.
    pub id: OrderId,
    /// Status.
    pub status: OrderStatus,
    /// Gateway product id.
    pub product_id: String,
    /// The supplier (plugin id) the order is with; for a routed product, the one that
    /// took it after any failover, so the one that served it once fulfilled.
    pub supplier: String,
    /// eSIMs ordered.
    pub quantity: u32,
    /// Price per eSIM.
    pub unit_price: Money,
    /// What it costs in total.
    pub total: Money,
    /// New eSIMs, or a top-up of one: `{"type": "esim"}` or
    /// `{"type": "top_up", "iccid": ...}`.
    pub kind: OrderKind,
    /// The reseller's reference for its end user, opened from its sealed form; absent
    /// once the subject was erased.
    pub subject_ref: Option<String>,
    /// The reseller's metadata, likewise.
    #[schemars(with = "Option<serde_json::Map<String, serde_json::Value>>")]
    pub metadata: Option<serde_json::Value>,
    /// Why it failed.
    pub failure: Option<OrderFailure>,
    /// Its identity verification, for a product that needs one: absent until a session
    /// is opened with `POST /v1/ekyc/sessions`.
    pub ekyc: Option<EkycSessionView>,
    /// Created, ms since the epoch.
    pub created_at_ms: u64,
    /// Last change.
    pub updated_at_ms: u64,
    /// Its eSIMs, with activation data.
    pub esims: Vec<EsimView>,
}

/// Most eSIMs one order may ask for.
pub const MAX_QUANTITY: u32 = 100;
/// Longest `subject_ref`.
pub const MAX_SUBJECT_REF: usize = 128;
/// Largest serialised `metadata`.
pub const MAX_METADATA_BYTES: usize = 4096;

impl Gateway {
    /// Accept an order: hold its price, persist it, and hand it to fulfilment. Waits up
    /// to `sync_wait` for a final state so fast suppliers answer in one round trip.
    pub async fn place_order(
        &self,
        who: &Principal,
        new: NewOrder,
        idem: Option<&IdemKey>,
    ) -> Result<OrderView, DomainError> {
        if !who.role.can_write() {
            return Err(DomainError::Forbidden);
        }
        let reseller = self.reseller_of(who).await?;
        validate_new_order(&new)?;
        let found = self
            .find_offer(&new.product_id, "/product_id", who.mode)
            .await?;
        let (supplier, product) = (&found.supplier, &found.product);
        if product.needs_kyc && !supplier.info().features.contains(&Feature::Ekyc) {
            return Err(DomainError::Conflict {
                code: "ekyc_required",
                message: "this product needs identity verification (eKYC), which its \
                          supplier's plugin does not run"
                    .into(),
            });
        }
        let spec = OrderSpec {
            reseller: reseller.id,
            product_id: new.product_id.clone(),
            plugin: supplier.info().id.clone(),
            sku: product.sku.clone(),
            quantity: new.quantity,
            unit_price: unit_price(product, reseller.markup_bps)?,
            kind: OrderKind::Esim,
        };
        let needs_kyc = product.needs_kyc;
        // The id is the one the idempotency key was claimed with: the claim names it.
        let id = idem.map_or_else(OrderId::new, |key| key.order);
        if let Some(subject_ref) = &new.subject_ref {
            let subject = self.keyring.subject_lookup(reseller.id, subject_ref);
            self.check_not_restricted(reseller.id, &subject).await?;
            // Filed under its subject before it exists: a reader checks the order.
            self.store
                .index_subject_order(reseller.id, &subject, id)
                .await?;
        }
        let personal = Personal {
            subject_ref: new.subject_ref,
            metadata: new.metadata,
        };
        let personal = self.seal_personal(reseller.id, id, &personal).await?;
        let now = self.clock.now_ms();
        let mut order = Order::accepted(spec, id, personal, now);
        order.fallbacks = found.fallbacks;
        if needs_kyc {
            // Paid for now, sent to the supplier once the end user is verified.
            order
                .transition(OrderStatus::AwaitingKyc, now)
                .expect("an accepted order may await eKYC");
            order.next_attempt_ms = now.saturating_add(self.tuning.ekyc_wait.as_millis() as u64);
        }
        let alert = reseller
            .low_balance_alerts
            .get(&order.unit_price.currency)
            .copied();
        self.accept(order, alert).await
    }

    /// Hold, persist durably, submit, and wait briefly for the outcome.
    /// `alert`: the reseller's `balance.low` threshold in the order's currency.
    pub(crate) async fn accept(
        &self,
        order: Order,
        alert: Option<i64>,
    ) -> Result<OrderView, DomainError> {
        let total = order.total().ok_or(DomainError::Invalid {
            field: "/quantity",
            message: "the order's total is larger than the ledger can hold".into(),
        })?;
        let commit = Commit::accept(order)?.alert_below(alert);
        match self.store.commit(&commit).await? {
            Ok(_) => {}
            Err(Rejected::Refused(refused)) => {
                return Err(DomainError::refused(refused, "/quantity", total.currency));
            }
            Err(Rejected::IccidTaken(_)) => unreachable!("an accepted order has no eSIM yet"),
        }
        let (_, order, _) = commit.into_parts();
        let order = order.expect("an acceptance carries its order");
        if order.status == OrderStatus::AwaitingKyc {
            // Its job ends the wait if no session opens in time.
            self.fulfilment
                .schedule(order.id, order.next_attempt_ms)
                .await?;
            self.store.durable().await?;
            self.fulfilment.counters.reached(OrderStatus::Accepted);
            return self.view(order, &[]).await;
        }
        self.store.durable().await?;
        self.fulfilment.counters.reached(OrderStatus::Accepted);
        let id = order.id;
        let settled = self.fulfilment.watch(id);
        let mut first = Box::pin(self.fulfilment.clone().run(order));
        let deadline = tokio::time::Instant::now() + self.tuning.sync_wait;
        if let Ok(done) = tokio::time::timeout_at(deadline, &mut first).await {
            if let Some(done) = done {
                // Settled by this first step: answer from the records in hand.
                return self.view(done.order, &done.esims).await;
            }
            // Waiting for a retry or a poll: wait for that too.
            let _ = tokio::time::timeout_at(deadline, settled).await;
        } else {
            // The supplier is still working; let it finish in the background.
            tokio::spawn(first);
        }
        self.stored_view(id, |_| true).await
    }

    /// The API view of an order and its stored eSIMs (activation data opened).
    async fn view(&self, order: Order, esims: &[EsimRecord]) -> Result<OrderView, DomainError> {
        let personal = self.open_personal(&order).await?;
        Ok(OrderView {
            esims: esims
                .iter()
                .map(|e| self.open_esim(e))
                .collect::<Result<_, _>>()?,
            total: order.accepted_total()?,
            id: order.id,
            status: order.status,
            product_id: order.product_id,
            supplier: order.plugin,
            quantity: order.quantity,
            unit_price: order.unit_price,
            kind: order.kind,
            subject_ref: personal.subject_ref,
            metadata: personal.metadata,
            failure: order.failure,
            ekyc: order
                .ekyc
                .as_ref()
                .map(|session| EkycSessionView::of(order.id, session)),
            created_at_ms: order.created_at_ms,
            updated_at_ms: order.updated_at_ms,
        })
    }

    /// The API view of a stored order, read together with its eSIMs, if `may_see` it.
    async fn stored_view(
        &self,
        id: OrderId,
        may_see: impl FnOnce(&Order) -> bool,
    ) -> Result<OrderView, DomainError> {
        let (order, esims) = self
            .store
            .order_and_esims(id)
            .await?
            .filter(|(o, _)| may_see(o))
            .ok_or(DomainError::NotFound("order"))?;
        self.order_view(order, esims).await
    }

    /// The API view of an order with the eSIMs stored under its ICCIDs.
    async fn order_view(
        &self,
        order: Order,
        mut esims: Vec<EsimRecord>,
    ) -> Result<OrderView, DomainError> {
        if order.kind != OrderKind::Esim {
            // A top-up names the eSIM it tops up, which an earlier order delivered.
            esims.clear();
        }
        self.view(order, &esims).await
    }

    /// One order, if the caller may see it.
    pub async fn order(&self, who: &Principal, id: OrderId) -> Result<OrderView, DomainError> {
        self.stored_view(id, |o| self.visible(who, o.reseller))
            .await
    }

    /// The caller's orders, newest first.
    pub async fn orders(
        &self,
        who: &Principal,
        before: Option<OrderId>,
        status: Option<OrderStatus>,
        limit: usize,
    ) -> Result<Page<OrderView>, DomainError> {
        let reseller = self.reseller_of(who).await?;
        let page = self
            .store
            .orders_page(reseller.id, before, status, limit)
            .await?;
        let mut items = Vec::with_capacity(page.items.len());
        for (order, esims) in page.items {
            items.push(self.order_view(order, esims).await?);
        }
        Ok(Page {
            items,
            has_more: page.has_more,
        })
    }

    /// Top up an eSIM with a top-up-able product of the same supplier: an order of kind
    /// `top_up`, paid and fulfilled like any other.
    pub async fn top_up(
        &self,
        who: &Principal,
        iccid: &str,
        product_id: &str,
        idem: Option<&IdemKey>,
    ) -> Result<OrderView, DomainError> {
        if !who.role.can_write() {
            return Err(DomainError::Forbidden);
        }
        let reseller = self.reseller_of(who).await?;
        let esim = self.esim_record(who, iccid).await?;
        let (supplier, product) = self
            .find_product(product_id, "/product_id", who.mode)
            .await?;
        if supplier.info().id != esim.plugin || !product.top_up_able {
            return Err(DomainError::Invalid {
                field: "/product_id",
                message: "must be a top-up-able product of the supplier that issued this eSIM"
                    .into(),
            });
        }
        let spec = OrderSpec {
            reseller: reseller.id,
            product_id: product_id.to_string(),
            plugin: esim.plugin.clone(),
            sku: product.sku.clone(),
            quantity: 1,
            unit_price: unit_price(&product, reseller.markup_bps)?,
            kind: OrderKind::TopUp { iccid: esim.iccid },
        };
        let id = idem.map_or_else(OrderId::new, |key| key.order);
        let order = Order::accepted(spec, id, None, self.clock.now_ms());
        let alert = reseller
            .low_balance_alerts
            .get(&order.unit_price.currency)
            .copied();
        self.accept(order, alert).await
    }

    /// Cancel a fulfilled order whose eSIMs were never installed, through the supplier,
    /// and refund its price to the prepaid balance.
    pub async fn cancel(&self, who: &Principal, id: OrderId) -> Result<OrderView, DomainError> {
        if !who.role.can_write() {
            return Err(DomainError::Forbidden);
        }
        // Two cancels of one order (a client retrying with a new key) are serialised under
        // its lock and the second reads it cancelled: it is refunded once.
        let _lock = self.fulfilment.lock_order(id).await?;
        let mut order = self
            .store
            .order(id)
            .await?
            .filter(|o| self.visible(who, o.reseller))
            .ok_or(DomainError::NotFound("order"))?;
        if order.status != OrderStatus::Fulfilled || order.kind != OrderKind::Esim {
            return Err(DomainError::Conflict {
                code: "order_not_cancellable",
                message: format!(
                    "only fulfilled eSIM orders can be cancelled; this one is {:?}",
                    order.status
                )
                .to_lowercase(),
            });
        }
        let supplier = self
            .suppliers
            .get(&order.plugin)
            .ok_or_else(|| DomainError::SupplierNotLoaded(order.plugin.clone()))?;
        // Never installed: check with the supplier now, not just our last observation.
        for iccid in &order.iccids {
            let usage = supplier.usage(iccid.clone()).await?;
            if usage.profile != ProfileState::Released {
                return Err(DomainError::Conflict {
                    code: "esim_installed",
                    message: format!(
                        "eSIM {iccid} was already {:?}; it cannot be cancelled",
                        usage.profile
                    )
                    .to_lowercase(),
                });
            }
        }
        for iccid in &order.iccids {
            supplier.cancel(order.id.to_string(), iccid.clone()).await?;
        }
        order
            .transition(OrderStatus::Cancelled, self.clock.now_ms())
            .map_err(|e| DomainError::Conflict {
                code: "order_not_cancellable",
                message: e.to_string(),
            })?;
        let mut esims = Vec::new();
        for iccid in &order.iccids {
            if let Some(mut e) = self.store.esim(iccid).await? {
                e.profile = ProfileState::Deleted;
                esims.push(e);
            }
        }
        // The order's own eSIMs: they are claimed by this order already.
        let commit = Commit::settle(order, EntryKind::Refund, esims)?;
        if let Err(rejected) = self.store.commit(&commit).await? {
            return Err(StoreError::Backend(format!(
                "refunding a cancelled order was refused: {rejected}"
            ))
            .into());
        }
        self.store.durable().await?;
        self.fulfilment.counters.reached(OrderStatus::Cancelled);
        let (_, order, esims) = commit.into_parts();
        self.order_view(order.expect("a settlement carries its order"), esims)
            .await
    }

    /// Claim an idempotency key for the caller (see `idempotency`).
    pub async fn claim_idempotency(
        &self,
        reseller: ResellerId,
        key: &str,
        fingerprint: &[u8; 32],
    ) -> Result<(IdemKey, Claim), DomainError> {
        if !idempotency::valid_key(key) {
            return Err(DomainError::Invalid {
                field: "Idempotency-Key",
                message: "must be 1 to 255 printable ASCII characters".into(),
            });
        }
        let idem = IdemKey {
            reseller,
            key: key.to_string(),
            order: OrderId::new(),
        };
        let claim = self
            .store
            .claim_idempotency(&idem, fingerprint, self.clock.now_ms())
            .await?;
        Ok((idem, claim))
    }

    /// Record the outcome of an idempotent request that did not create an order.
    pub async fn finish_idempotency(
        &self,
        key: &IdemKey,
        state: &IdemState,
    ) -> Result<(), DomainError> {
        Ok(self.store.finish_idempotency(key, state).await?)
    }

    /// Forget idempotency keys older than the retention window; returns how many.
    pub async fn expire_idempotency_keys(&self) -> Result<usize, DomainError> {
        let cutoff = self
            .clock
            .now_ms()
            .saturating_sub(self.tuning.idempotency_retention.as_millis() as u64);
        Ok(self.store.expire_idempotency(cutoff).await?)
    }

    /// Free a key whose request created nothing, so the client may retry with it.
    pub async fn release_idempotency(&self, key: &IdemKey) -> Result<(), DomainError> {
        Ok(self.store.release_idempotency(key).await?)
    }
}

/// Check a `subject_ref`: 1 to [`MAX_SUBJECT_REF`] printable characters.
pub(crate) fn valid_subject_ref(s: &str) -> Result<(), DomainError> {
    if s.is_empty() || s.len() > MAX_SUBJECT_REF || s.chars().any(char::is_control) {
        return Err(DomainError::Invalid {
            field: "/subject_ref",
            message: format!(
                "must be 1 to {MAX_SUBJECT_REF} printable characters (an opaque reference, not personal data)"
            ),
        });
    }
    Ok(())
}

fn validate_new_order(new: &NewOrder) -> Result<(), DomainError> {
    if new.quantity == 0 || new.quantity > MAX_QUANTITY {
        return Err(DomainError::Invalid {
            field: "/quantity",
            message: format!("must be 1 to {MAX_QUANTITY}"),
        });
    }
    if let Some(s) = &new.subject_ref {
        valid_subject_ref(s)?;
    }
    if let Some(m) = &new.metadata
        && m.to_string().len() > MAX_METADATA_BYTES
    {
        return Err(DomainError::Invalid {
            field: "/metadata",
            message: format!("must serialise to at most {MAX_METADATA_BYTES} bytes"),
        });
    }
    Ok(())
}

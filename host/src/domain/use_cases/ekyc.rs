//! eKYC sessions: open one for an order that awaits verification (with the subject's
//! recorded `ekyc` consent), read one, and apply a verification provider's callback as its
//! plugin reads it. See [`crate::domain::ekyc`] for what is kept, and
//! [`crate::domain::fulfilment::Fulfilment::decide_kyc`] for what a decision does.

use crate::domain::consent::{ConsentState, MAX_HISTORY};
use crate::domain::ekyc::{
    EkycRequest, EkycSession, EkycSessionView, EkycStatus, Inbound, check_redirect, valid_url,
};
use crate::domain::fulfilment::{KycDecided, StepError};
use crate::domain::gateway::{DomainError, Gateway, Principal};
use crate::domain::ids::{EkycSessionId, OrderId};
use crate::domain::jobs::Job;
use crate::domain::orders::{Order, OrderStatus};
use crate::domain::store::Commit;
use crate::domain::supplier::{FaultKind, Feature, Supplier, SupplierError};

/// The purpose whose consent an eKYC session needs.
pub const EKYC_PURPOSE: &str = "ekyc";

/// What a provider callback did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallbackOutcome {
    /// The session's status changed (and its order with it).
    Applied(EkycStatus),
    /// Nothing changed: the session was decided already, or the status was `pending`.
    Unchanged,
}

impl From<StepError> for DomainError {
    fn from(e: StepError) -> DomainError {
        match e {
            StepError::Store(e) => DomainError::Store(e),
            StepError::Total(e) => e.into(),
            StepError::Illegal(e) => DomainError::Conflict {
                code: "order_state_changed",
                message: e.to_string(),
            },
        }
    }
}

impl Gateway {
    /// Open the verification session of order `id` for the caller, sending the end user
    /// back to `return_url` when done. Idempotent per order: an order that has a session
    /// answers it (`false`: not created now) instead of opening another.
    pub async fn start_ekyc(
        &self,
        who: &Principal,
        id: OrderId,
        return_url: &str,
    ) -> Result<(EkycSessionView, bool), DomainError> {
        if !who.role.can_write() {
            return Err(DomainError::Forbidden);
        }
        valid_url(return_url).map_err(|message| DomainError::Invalid {
            field: "/return_url",
            message: format!("must be an absolute http(s) URL: {message}"),
        })?;
        let order = self.own_order(who, id).await?;
        if let Some(session) = &order.ekyc {
            return Ok((EkycSessionView::of(id, session), false));
        }
        self.check_can_start(&order).await?;
        let supplier = self.ekyc_supplier(&order.plugin)?;

        let _lock = self.fulfilment.lock_order(id).await?;
        // Read again under the lock: another request may have opened it, or the wait
        // may have run out, while this one waited.
        let mut order = self.own_order(who, id).await?;
        if let Some(session) = &order.ekyc {
            return Ok((EkycSessionView::of(id, session), false));
        }
        self.check_can_start(&order).await?;
        // Only the session's id, the SKU and the way back cross to the supplier (P2, P3).
        let request = EkycRequest {
            session_ref: EkycSessionId::of(id).to_string(),
            sku: order.sku.clone(),
            return_url: return_url.to_string(),
        };
        let redirect = supplier.ekyc_start(request).await?;
        let now = self.clock.now_ms();
        let redirect = check_redirect(redirect, now).map_err(|detail| {
            tracing::warn!(plugin = %order.plugin, order = %id, %detail, "plugin returned a bad eKYC redirect");
            DomainError::Supplier(SupplierError::Fault {
                kind: FaultKind::BadOutput,
                message: format!("plugin {} returned a bad eKYC redirect: {detail}", order.plugin),
            })
        })?;
        order.ekyc = Some(EkycSession {
            supplier_ref: redirect.supplier_ref,
            status: EkycStatus::Pending,
            redirect_url: Some(redirect.url),
            created_at_ms: now,
            updated_at_ms: now,
            expires_at_ms: redirect.expires_at_ms,
        });
        // The order now waits as long as the session is open.
        order.next_attempt_ms = redirect.expires_at_ms;
        order.updated_at_ms = now;
        let commit = Commit::change(Some(order.clone()), Vec::new(), Vec::new());
        if let Err(rejected) = self.store.commit(&commit).await? {
            return Err(DomainError::Store(
                crate::domain::store::StoreError::Backend(format!(
                    "opening the eKYC session of order {id} was refused: {rejected}"
                )),
            ));
        }
        // Its job ends the wait: due when the session expires, if that is sooner.
        self.store
            .hasten_job(&Job::fulfil(id, redirect.expires_at_ms))
            .await?;
        self.store.durable().await?;
        self.alarm.set(redirect.expires_at_ms);
        let session = order.ekyc.as_ref().expect("just set");
        Ok((EkycSessionView::of(id, session), true))
    }

    /// One of the caller's verification sessions.
    pub async fn ekyc_session(
        &self,
        who: &Principal,
        id: EkycSessionId,
    ) -> Result<EkycSessionView, DomainError> {
        let order = self
            .own_order(who, id.order())
            .await
            .map_err(|_| DomainError::NotFound("ekyc session"))?;
        let session = order
            .ekyc
            .as_ref()
            .ok_or(DomainError::NotFound("ekyc session"))?;
        Ok(EkycSessionView::of(order.id, session))
    }

    /// A verification provider's callback for `plugin`'s sessions: the plugin checks its
    /// signature and reads a session and a status from it; nothing else of it is kept.
    pub async fn ekyc_callback(
        &self,
        plugin: &str,
        inbound: Inbound,
    ) -> Result<CallbackOutcome, DomainError> {
        let supplier = self
            .ekyc_supplier(plugin)
            .map_err(|_| DomainError::NotFound("plugin"))?;
        let update = supplier.ekyc_callback(inbound).await.map_err(|e| match e {
            SupplierError::InvalidRequest(reason) | SupplierError::Rejected(reason) => {
                tracing::warn!(target: "simgate::security", plugin, %reason, "eKYC callback refused by its plugin");
                DomainError::InboundRefused(reason)
            }
            other => DomainError::Supplier(other),
        })?;
        let session: Option<EkycSessionId> = update.session_ref.parse().ok();
        let order = match session {
            Some(session) => self.store.order(session.order()).await?,
            None => None,
        };
        // A plugin may only speak for its own sessions.
        let Some(order) = order.filter(|o| o.plugin == plugin && o.ekyc.is_some()) else {
            tracing::warn!(target: "simgate::security", plugin, "eKYC callback names no session of this plugin; ignored");
            return Err(DomainError::NotFound("ekyc session"));
        };
        match self.fulfilment.decide_kyc(order.id, update.status).await? {
            KycDecided::Submitted => Ok(CallbackOutcome::Applied(EkycStatus::Approved)),
            KycDecided::Settled(_) => Ok(CallbackOutcome::Applied(update.status)),
            KycDecided::Unchanged | KycDecided::Waiting(_) => Ok(CallbackOutcome::Unchanged),
        }
    }

    /// Order `id`, if the caller may see it.
    async fn own_order(&self, who: &Principal, id: OrderId) -> Result<Order, DomainError> {
        self.store
            .order(id)
            .await?
            .filter(|o| self.visible(who, o.reseller))
            .ok_or(DomainError::NotFound("order"))
    }

    /// Whether a session may open for `order`: it awaits eKYC and its subject consented.
    async fn check_can_start(&self, order: &Order) -> Result<(), DomainError> {
        if order.status != OrderStatus::AwaitingKyc {
            return Err(DomainError::Conflict {
                code: "order_not_awaiting_kyc",
                message: format!(
                    "only an order awaiting eKYC can start a session; this one is {}",
                    crate::domain::fulfilment::status_name(order.status)
                ),
            });
        }
        let Some(subject) = order.personal.as_ref().and_then(|p| p.subject) else {
            return Err(DomainError::Conflict {
                code: "consent_required",
                message: "the order names no subject_ref, so no consent to eKYC can be on \
                          record: place the order with the end user's subject_ref and \
                          record their consent (POST /v1/consents, purpose \"ekyc\")"
                    .into(),
            });
        };
        self.check_not_restricted(order.reseller, &subject).await?;
        let history = self
            .store
            .consents(order.reseller, &subject, MAX_HISTORY)
            .await?;
        if !ConsentState::of(&history).granted(EKYC_PURPOSE) {
            return Err(DomainError::Conflict {
                code: "consent_required",
                message: "the order's subject has not granted consent to eKYC (or withdrew \
                          it): record it with POST /v1/consents, purpose \"ekyc\""
                    .into(),
            });
        }
        Ok(())
    }

    /// The loaded supplier `plugin`, if it runs eKYC.
    pub(crate) fn ekyc_supplier(
        &self,
        plugin: &str,
    ) -> Result<std::sync::Arc<dyn Supplier>, DomainError> {
        let supplier = self
            .suppliers
            .get(plugin)
            .ok_or_else(|| DomainError::SupplierNotLoaded(plugin.to_string()))?;
        if !supplier.info().features.contains(&Feature::Ekyc) {
            return Err(DomainError::Supplier(SupplierError::NotSupported));
        }
        Ok(supplier)
    }
}

//! The simgate sandbox supplier: a deterministic fake that the demo and most tests run on.
//!
//! Nothing leaves the plugin: every answer is derived by hashing the request's references
//! (see [`derive`]), so the same `order-ref` always yields the same eSIMs, across calls and
//! restarts, without state. The one exception is eKYC in provider mode, below.
//!
//! Behaviour worth knowing, by SKU (the full table is in [`catalog`]):
//!
//! | SKU | behaviour |
//! |---|---|
//! | `SBX-ASYNC-1GB-7D` | `provision` answers `pending`; `poll` (or an `order.delivered` webhook) delivers |
//! | `SBX-XX-OOS` | `provision` fails with `out-of-stock` |
//! | `SBX-CN-3GB-15D` | `needs-kyc`; `ekyc.start` sends users to `kyc.sandbox.simgate.test`, or to the provider |
//! | anything else | delivered at once: ICCIDs `8999…` (19 digits, Luhn-valid), 1 to 10 per order |
//!
//! Inbound callbacks and webhooks carry `x-sandbox-signature`, the hex HMAC-SHA256 of the
//! body under `SANDBOX_WEBHOOK_SECRET`; when the operator did not grant that secret they are
//! accepted unsigned, with a warning (see [`inbound`]), except eKYC callbacks in provider
//! mode, which must then be signed.
//!
//! # eKYC provider mode
//!
//! With nothing configured, `ekyc.start` answers a redirect to a `.test` name that never
//! resolves, so `./dev serve` works offline. When the operator sets config
//! `kyc_provider_url`, the sandbox instead opens sessions at a verification provider with a
//! hosted flow like Veriff's (`POST {kyc_provider_url}/v1/sessions`, see [`provider`]); the
//! black-box tests point it at a simulator on a loopback port. Provider decisions arrive on
//! the eKYC callback signed with `x-hmac-signature` and are never accepted unsigned; only
//! their `vendorData` and `status` are read (`approved` → approved; `declined`, `expired`,
//! `abandoned` → rejected; `resubmission_requested`, `review` → pending).
//!
//! | what | name | |
//! |---|---|---|
//! | config | `kyc_provider_url` | the provider's base URL; unset: the built-in redirect |
//! | config | `kyc_session_seconds` | how long a session lasts (default 604800, 7 days) |
//! | secret | `KYC_PROVIDER_API_KEY` | sent as `x-auth-client` at egress (the plugin never sees it) |
//! | secret | `KYC_PROVIDER_SECRET` | checks the decisions' `x-hmac-signature` |
//! | outbound | `http://127.0.0.1:*` | the only destination `plugin.toml` requests (tests, local providers) |
//!
//! ```toml
//! # grants.toml
//! [plugins.sandbox]
//! outbound = ["http://127.0.0.1:*"]
//! allow_private_addresses = true        # the provider is on loopback
//! secrets = ["KYC_PROVIDER_API_KEY", "KYC_PROVIDER_SECRET"]
//! secret_hosts = { KYC_PROVIDER_API_KEY = ["http://127.0.0.1:*"] }
//! config = { kyc_provider_url = "http://127.0.0.1:4711" }
//!
//! # secrets.toml
//! [sandbox]
//! KYC_PROVIDER_API_KEY = "..."
//! KYC_PROVIDER_SECRET = "..."
//! ```

pub mod catalog;
pub mod derive;
pub mod inbound;
pub mod provider;

use simgate_sdk::v0_1::{
    CancelRequest, Catalog, Ekyc, EkycRedirect, EkycRequest, EkycUpdate, Feature, Inbound, Info,
    PlanState, Plugin, PollRequest, Product, ProfileState, ProvisionOutcome, ProvisionRequest,
    Provisioning, SupplierError, SupplierEvent, TopUpRequest, Usage, Webhooks, clock, config, log,
};

use catalog::{Behaviour, GIB};
use derive::{esims, reference, require_quantity, require_sandbox_iccid};

/// Where `ekyc.start` sends the end user (a reserved `.test` name: it never resolves).
const KYC_URL: &str = "https://kyc.sandbox.simgate.test/verify";
/// How long a built-in eKYC redirect stays valid.
const KYC_SESSION_MS: u64 = 30 * 60 * 1000;

/// The sandbox supplier.
pub struct Sandbox;

impl Plugin for Sandbox {
    fn describe() -> Info {
        Info {
            id: "sandbox".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            supplier: "simgate sandbox".into(),
            features: vec![
                Feature::AsyncProvisioning,
                Feature::TopUp,
                Feature::Cancel,
                Feature::Usage,
                Feature::Ekyc,
                Feature::Webhooks,
            ],
        }
    }
}

impl Catalog for Sandbox {
    fn list_products() -> Result<Vec<Product>, SupplierError> {
        Ok(catalog::PRODUCTS.iter().map(|e| e.to_product()).collect())
    }
}

impl Provisioning for Sandbox {
    fn provision(req: ProvisionRequest) -> Result<ProvisionOutcome, SupplierError> {
        let product = catalog::find(&req.sku)?;
        require_quantity(req.quantity)?;
        match product.behaviour {
            Behaviour::Instant => Ok(ProvisionOutcome::Delivered(esims(
                &req.order_ref,
                req.quantity,
            ))),
            Behaviour::Async => Ok(ProvisionOutcome::Pending(derive::pending_ref(
                &req.order_ref,
                req.quantity,
            ))),
            Behaviour::OutOfStock => Err(SupplierError::OutOfStock),
        }
    }

    /// A pending order is always ready by the first poll: with no state between calls,
    /// "pending for a while" could only be faked with the clock, which would make tests
    /// flaky.
    fn poll(req: PollRequest) -> Result<ProvisionOutcome, SupplierError> {
        let quantity = derive::parse_pending_ref(&req.order_ref, &req.supplier_ref)?;
        Ok(ProvisionOutcome::Delivered(esims(&req.order_ref, quantity)))
    }

    fn top_up(req: TopUpRequest) -> Result<String, SupplierError> {
        require_sandbox_iccid(&req.iccid)?;
        let product = catalog::find(&req.sku)?;
        if !product.top_up_able {
            return Err(SupplierError::InvalidRequest(format!(
                "{} cannot be used as a top-up",
                req.sku
            )));
        }
        Ok(reference("TU", &[&req.order_ref, &req.iccid, &req.sku]))
    }

    fn cancel(req: CancelRequest) -> Result<(), SupplierError> {
        require_sandbox_iccid(&req.iccid)
    }

    /// Sandbox eSIMs are never installed anywhere, so they report as released and unused;
    /// only the plan size varies, derived from the ICCID.
    fn usage(iccid: String) -> Result<Usage, SupplierError> {
        require_sandbox_iccid(&iccid)?;
        const SIZES_GIB: [u64; 4] = [1, 3, 5, 10];
        let size = SIZES_GIB[(derive::fnv1a(&["usage", &iccid]) % 4) as usize];
        Ok(Usage {
            used_bytes: 0,
            total_bytes: Some(size * GIB),
            profile: ProfileState::Released,
            plan: PlanState::Ready,
            raw_status: "RELEASED".into(),
            expires_at_ms: None,
        })
    }
}

impl Ekyc for Sandbox {
    fn start(req: EkycRequest) -> Result<EkycRedirect, SupplierError> {
        catalog::find(&req.sku)?;
        if let Some(settings) = provider::Settings::from_config()? {
            return provider::start(&settings, &req, clock::now_ms());
        }
        Ok(EkycRedirect {
            url: kyc_url(&req),
            supplier_session_ref: reference("KYC", &[&req.session_ref, &req.sku]),
            expires_at_ms: clock::now_ms() + KYC_SESSION_MS,
        })
    }

    /// A provider decision (it carries `x-hmac-signature`), or the sandbox's own format.
    fn parse_callback(req: Inbound) -> Result<EkycUpdate, SupplierError> {
        if req.header(provider::SIGNATURE_HEADER).is_some() {
            provider::check_signature(&req)?;
            let (update, status) = provider::parse_decision(&req.body)?;
            // The status is the one field of a decision that may be logged.
            log::emit(
                log::Level::Info,
                "eKYC provider decision",
                &[("status", status.as_str())],
            );
            return Ok(update);
        }
        // With a provider configured, an unsigned sandbox-format callback would bypass its
        // signed decisions: the sandbox format must then be signed too.
        let unsigned = if config::get(provider::URL_CONFIG).is_some() {
            inbound::Unsigned::Refuse
        } else {
            inbound::Unsigned::AcceptWithWarning
        };
        inbound::check_signature(&req, unsigned)?;
        inbound::parse_callback(&req.body)
    }
}

impl Webhooks for Sandbox {
    fn parse(req: Inbound) -> Result<Vec<SupplierEvent>, SupplierError> {
        inbound::check_signature(&req, inbound::Unsigned::AcceptWithWarning)?;
        let (events, skipped) = inbound::parse_events(&req.body)?;
        if skipped > 0 {
            log::warn(&format!(
                "skipped {skipped} webhook event(s) of unknown type"
            ));
        }
        Ok(events)
    }
}

fn kyc_url(req: &EkycRequest) -> String {
    format!(
        "{KYC_URL}?session={}&return={}",
        derive::url_encode(&req.session_ref),
        derive::url_encode(&req.return_url)
    )
}

simgate_sdk::export_v0_1!(Sandbox);

#[cfg(test)]
mod tests {
    use super::*;

    fn provision(sku: &str, quantity: u32) -> Result<ProvisionOutcome, SupplierError> {
        Sandbox::provision(ProvisionRequest {
            order_ref: "ord_test".into(),
            sku: sku.into(),
            quantity,
        })
    }

    #[test]
    fn describe_matches_the_manifest() {
        let manifest = include_str!("../plugin.toml");
        let info = Sandbox::describe();
        assert!(manifest.contains(&format!("id = \"{}\"", info.id)));
        assert!(manifest.contains(&format!("version = \"{}\"", info.version)));
    }

    #[test]
    fn provisioning_is_idempotent_on_order_ref() {
        let first = provision("SBX-JP-5GB-30D", 3).unwrap();
        assert_eq!(first, provision("SBX-JP-5GB-30D", 3).unwrap());
        let ProvisionOutcome::Delivered(esims) = first else {
            panic!("expected delivery")
        };
        assert_eq!(esims.len(), 3);
    }

    #[test]
    fn bad_orders_are_refused() {
        assert_eq!(provision("SBX-XX-OOS", 1), Err(SupplierError::OutOfStock));
        for (sku, quantity) in [
            ("SBX-NOPE", 1),
            ("SBX-US-5GB-30D", 0),
            ("SBX-US-5GB-30D", 11),
        ] {
            assert!(matches!(
                provision(sku, quantity),
                Err(SupplierError::InvalidRequest(_))
            ));
        }
    }

    #[test]
    fn async_orders_are_delivered_by_poll_as_a_sync_order_would_be() {
        let Ok(ProvisionOutcome::Pending(supplier_ref)) = provision("SBX-ASYNC-1GB-7D", 2) else {
            panic!("expected pending")
        };
        let polled = Sandbox::poll(PollRequest {
            order_ref: "ord_test".into(),
            supplier_ref,
        });
        assert_eq!(
            polled,
            Ok(ProvisionOutcome::Delivered(esims("ord_test", 2)))
        );
    }

    #[test]
    fn top_up_needs_a_sandbox_iccid_and_a_top_up_able_sku() {
        let iccid = derive::esim("ord_test", 0).iccid;
        let top_up = |iccid: &str, sku: &str| {
            Sandbox::top_up(TopUpRequest {
                order_ref: "ord_tu".into(),
                iccid: iccid.into(),
                sku: sku.into(),
            })
        };
        let reference = top_up(&iccid, "SBX-US-5GB-30D").unwrap();
        assert!(reference.starts_with("TU-"));
        assert_eq!(top_up(&iccid, "SBX-US-5GB-30D").unwrap(), reference);
        assert!(top_up(&iccid, "SBX-FR-3GB-15D").is_err());
        assert!(top_up("8944000000000000000", "SBX-US-5GB-30D").is_err());
    }

    #[test]
    fn usage_and_cancel_accept_only_sandbox_iccids() {
        let iccid = derive::esim("ord_test", 1).iccid;
        let usage = Sandbox::usage(iccid.clone()).unwrap();
        assert_eq!(usage.profile, ProfileState::Released);
        assert_eq!(usage.plan, PlanState::Ready);
        assert_eq!(usage.raw_status, "RELEASED");
        assert_eq!(Sandbox::usage(iccid.clone()), Ok(usage));
        assert!(Sandbox::usage("123".into()).is_err());
        let cancel = |iccid: &str| {
            Sandbox::cancel(CancelRequest {
                order_ref: "ord_test".into(),
                iccid: iccid.into(),
            })
        };
        assert_eq!(cancel(&iccid), Ok(()));
        assert!(cancel("123").is_err());
    }

    #[test]
    fn kyc_redirect_names_the_session_and_return_url() {
        let url = kyc_url(&EkycRequest {
            session_ref: "ks_1".into(),
            sku: "SBX-CN-3GB-15D".into(),
            return_url: "https://shop.test/done?x=1".into(),
        });
        assert_eq!(
            url,
            "https://kyc.sandbox.simgate.test/verify?session=ks_1\
             &return=https%3A%2F%2Fshop.test%2Fdone%3Fx%3D1"
        );
    }
}

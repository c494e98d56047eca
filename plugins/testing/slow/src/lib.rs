//! Test plugin `slow`: `provision` waits 2 s on the host clock (well inside the 5 s budget),
//! then delivers one eSIM. It keeps a request in flight long enough to test what happens
//! to it during a shutdown or a reload.

use simgate_sdk::v0_1::*;

/// How long `provision` takes.
const DELAY_MS: u64 = 2_000;

struct Slow;

impl Provisioning for Slow {
    fn provision(req: ProvisionRequest) -> Result<ProvisionOutcome, SupplierError> {
        let until = clock::now_ms() + DELAY_MS;
        // Busy-waits: there is no sleep in the sandbox. The host's epoch ticks still
        // preempt it, so the gateway's other work goes on.
        while clock::now_ms() < until {}
        Ok(ProvisionOutcome::Delivered(
            (0..req.quantity)
                .map(|_| Esim {
                    // Luhn-valid, in the 8999 test range.
                    iccid: "8999000000000000005".into(),
                    smdp_address: "smdp.slow.test".into(),
                    matching_id: "SLOW-1".into(),
                    confirmation_code_required: false,
                })
                .collect(),
        ))
    }
}

impl Plugin for Slow {
    fn describe() -> Info {
        testing_common::info("slow", env!("CARGO_PKG_VERSION"))
    }
}

impl Catalog for Slow {
    fn list_products() -> Result<Vec<Product>, SupplierError> {
        Ok(vec![testing_common::product("slow-1")])
    }
}

impl Ekyc for Slow {}
impl Webhooks for Slow {}

simgate_sdk::export_v0_1!(Slow);

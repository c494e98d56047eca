//! Test plugin `oversized`: `provision` delivers 4,500 eSIMs with 4 KiB matching ids,
//! about 18.5 MB of strings: far over the host's output cap (4 MiB by default, and over
//! 16 MiB too), while the guest itself peaks near 20 MiB, under the default 32 MiB memory
//! cap, so that the output limit and not the memory limit is what trips.

use simgate_sdk::v0_1::*;

struct Oversized;

impl Provisioning for Oversized {
    fn provision(_req: ProvisionRequest) -> Result<ProvisionOutcome, SupplierError> {
        const COUNT: usize = 4_500;
        const MATCHING_ID_LEN: usize = 4096;
        let esims = (0..COUNT)
            .map(|i| Esim {
                iccid: format!("8999{i:015}"),
                smdp_address: "smdp.oversized.simgate.test".into(),
                matching_id: "X".repeat(MATCHING_ID_LEN),
                confirmation_code_required: false,
            })
            .collect();
        Ok(ProvisionOutcome::Delivered(esims))
    }
}

impl Plugin for Oversized {
    fn describe() -> Info {
        testing_common::info("oversized", env!("CARGO_PKG_VERSION"))
    }
}

impl Catalog for Oversized {
    fn list_products() -> Result<Vec<Product>, SupplierError> {
        Ok(vec![testing_common::product("oversized-1")])
    }
}

impl Ekyc for Oversized {}
impl Webhooks for Oversized {}

simgate_sdk::export_v0_1!(Oversized);

//! Test plugin `hog`: `provision` allocates memory without bound, 1 MiB at a time, and
//! touches every page. The host's memory cap must stop it.

use simgate_sdk::v0_1::*;

struct Hog;

impl Provisioning for Hog {
    fn provision(_req: ProvisionRequest) -> Result<ProvisionOutcome, SupplierError> {
        const CHUNK: usize = 1024 * 1024;
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        loop {
            let mut chunk = vec![0u8; CHUNK];
            for page in chunk.iter_mut().step_by(4096) {
                *page = 1;
            }
            hoard.push(core::hint::black_box(chunk));
        }
    }
}

impl Plugin for Hog {
    fn describe() -> Info {
        testing_common::info("hog", env!("CARGO_PKG_VERSION"))
    }
}

impl Catalog for Hog {
    fn list_products() -> Result<Vec<Product>, SupplierError> {
        Ok(vec![testing_common::product("hog-1")])
    }
}

impl Ekyc for Hog {}
impl Webhooks for Hog {}

simgate_sdk::export_v0_1!(Hog);

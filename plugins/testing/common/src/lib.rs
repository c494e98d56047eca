//! What every test plugin shares, so that each plugin's file shows only its misbehaviour.

use simgate_sdk::v0_1::{DataAllowance, Info, Money, Product};

/// `describe()` for test plugin `id`: no optional features.
pub fn info(id: &str, version: &str) -> Info {
    Info {
        id: id.into(),
        version: version.into(),
        supplier: format!("simgate test plugin {id}"),
        features: Vec::new(),
    }
}

/// A product that can be ordered through the gateway: US, 1 GiB, 7 days, 1.00 USD.
pub fn product(sku: &str) -> Product {
    Product {
        sku: sku.into(),
        title: format!("Test product {sku}"),
        countries: vec!["US".into()],
        region: None,
        data: DataAllowance::Bytes(1024 * 1024 * 1024),
        validity_days: 7,
        wholesale: Money {
            minor: 100,
            currency: "USD".into(),
        },
        needs_kyc: false,
        top_up_able: false,
    }
}

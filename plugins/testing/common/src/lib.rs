//! What every test plugin shares, so that each plugin's file shows only its misbehaviour:
//! its `describe` and its one product, for either contract version (the root serves 0.1,
//! [`v0_2`] serves plugins built against 0.2).

/// Writes `info` and `product` over the types of the contract version at `$types`.
macro_rules! describe_and_product {
    ($($types:ident)::+) => {
        use $($types)::+::{DataAllowance, Info, Money, Product};

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
    };
}

/// For plugins built against contract 0.1 (most test plugins).
mod v0_1 {
    describe_and_product!(simgate_sdk::v0_1);
}

pub use v0_1::{info, product};

/// For plugins built against contract 0.2.
pub mod v0_2 {
    describe_and_product!(simgate_sdk);
}

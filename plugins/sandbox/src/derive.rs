//! Everything the sandbox answers is derived from the request's references by hashing:
//! each call runs in a fresh instance, and the same `order-ref` must give the same eSIMs
//! (provisioning is idempotent), so there is no state to keep.

use simgate_sdk::v0_1::{Esim, SupplierError};

/// The SM-DP+ every sandbox eSIM points at (a reserved `.test` name: it never resolves).
pub const SMDP_ADDRESS: &str = "smdp.sandbox.simgate.test";

/// ICCIDs start with 89 (telecom) and 99, a country code no real issuer uses.
const ICCID_PREFIX: &str = "8999";
const ICCID_LEN: usize = 19;
const MATCHING_ID_LEN: usize = 20;
const ALPHANUMERIC: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ";

/// The most eSIMs one sandbox order may ask for.
pub const MAX_QUANTITY: u32 = 10;

/// 64-bit FNV-1a over the parts, with a separator so that `["ab", "c"]` and `["a", "bc"]`
/// differ.
pub fn fnv1a(parts: &[&str]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for byte in part.bytes().chain([0x1f]) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    hash
}

/// A reference like `TU-0123456789ABCDEF` for the given parts.
pub fn reference(prefix: &str, parts: &[&str]) -> String {
    format!("{prefix}-{:016X}", fnv1a(parts))
}

/// SplitMix64: spreads one hash over as many pseudo-random words as needed.
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The Luhn check digit for a string of digits.
pub fn luhn_check_digit(payload: &str) -> u8 {
    let sum: u32 = payload
        .bytes()
        .rev()
        .enumerate()
        .map(|(i, b)| {
            let d = u32::from(b - b'0');
            // Counting from the right of the payload, every first, third... digit is
            // doubled: they are the second, fourth... once the check digit is appended.
            if i % 2 == 0 {
                let doubled = d * 2;
                if doubled > 9 { doubled - 9 } else { doubled }
            } else {
                d
            }
        })
        .sum();
    ((10 - sum % 10) % 10) as u8
}

/// Whether `digits` is all ASCII digits and ends in a correct Luhn check digit.
pub fn luhn_valid(digits: &str) -> bool {
    if digits.len() < 2 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    let (payload, check) = digits.split_at(digits.len() - 1);
    check.as_bytes()[0] - b'0' == luhn_check_digit(payload)
}

/// Whether the sandbox could have issued `iccid`: 19 digits, prefix 8999, Luhn-valid.
pub fn is_sandbox_iccid(iccid: &str) -> bool {
    iccid.len() == ICCID_LEN && iccid.starts_with(ICCID_PREFIX) && luhn_valid(iccid)
}

/// `invalid-request` unless the sandbox could have issued `iccid`.
pub fn require_sandbox_iccid(iccid: &str) -> Result<(), SupplierError> {
    if is_sandbox_iccid(iccid) {
        Ok(())
    } else {
        Err(SupplierError::InvalidRequest(format!(
            "{iccid:?} is not a sandbox ICCID (19 digits, prefix 8999, Luhn-valid)"
        )))
    }
}

/// `invalid-request` unless `1 <= quantity <= MAX_QUANTITY`.
pub fn require_quantity(quantity: u32) -> Result<(), SupplierError> {
    if (1..=MAX_QUANTITY).contains(&quantity) {
        Ok(())
    } else {
        Err(SupplierError::InvalidRequest(format!(
            "quantity {quantity} is outside 1..={MAX_QUANTITY}"
        )))
    }
}

/// The `index`-th eSIM of order `order_ref`.
pub fn esim(order_ref: &str, index: u32) -> Esim {
    let index = index.to_string();
    let body = fnv1a(&["iccid", order_ref, &index]) % 100_000_000_000_000;
    let payload = format!("{ICCID_PREFIX}{body:014}");
    let iccid = format!("{payload}{}", luhn_check_digit(&payload));

    let mut state = fnv1a(&["matching-id", order_ref, &index]);
    let matching_id = (0..MATCHING_ID_LEN)
        .map(|_| ALPHANUMERIC[(splitmix(&mut state) % ALPHANUMERIC.len() as u64) as usize] as char)
        .collect();

    Esim {
        iccid,
        smdp_address: SMDP_ADDRESS.into(),
        matching_id,
        confirmation_code_required: false,
    }
}

/// All eSIMs of order `order_ref`: the same every time.
pub fn esims(order_ref: &str, quantity: u32) -> Vec<Esim> {
    (0..quantity).map(|i| esim(order_ref, i)).collect()
}

/// The reference `provision` answers `pending` with. It carries the quantity (which
/// `poll-request` does not) and a hash tying both to the order.
pub fn pending_ref(order_ref: &str, quantity: u32) -> String {
    let hash = fnv1a(&["pending", order_ref, &quantity.to_string()]);
    format!("PEND-{quantity}-{hash:016X}")
}

/// The quantity encoded in `supplier_ref`, if it is the pending reference of `order_ref`.
pub fn parse_pending_ref(order_ref: &str, supplier_ref: &str) -> Result<u32, SupplierError> {
    let invalid = || {
        SupplierError::InvalidRequest(format!(
            "{supplier_ref:?} is not a pending reference of order {order_ref:?}"
        ))
    };
    let rest = supplier_ref.strip_prefix("PEND-").ok_or_else(invalid)?;
    let (quantity, _) = rest.split_once('-').ok_or_else(invalid)?;
    let quantity: u32 = quantity.parse().map_err(|_| invalid())?;
    if pending_ref(order_ref, quantity) != supplier_ref {
        return Err(invalid());
    }
    require_quantity(quantity)?;
    Ok(quantity)
}

/// Percent-encode everything but RFC 3986 unreserved characters.
pub fn url_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Decode lower- or upper-case hex; `None` if it is not hex.
pub fn hex_decode(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn luhn_accepts_known_numbers_and_rejects_altered_ones() {
        // Classic examples: a test card number and an ICCID-like number.
        assert!(luhn_valid("4111111111111111"));
        assert!(luhn_valid("79927398713"));
        assert!(!luhn_valid("79927398710"));
        assert!(!luhn_valid("7992739871x"));
        assert_eq!(luhn_check_digit("7992739871"), 3);
    }

    #[test]
    fn the_same_order_ref_gives_the_same_esims() {
        assert_eq!(esims("ord_123", 3), esims("ord_123", 3));
        assert_eq!(esims("ord_123", 3)[..2], esims("ord_123", 2)[..]);
    }

    #[test]
    fn different_orders_and_indices_give_different_esims() {
        let mut iccids: Vec<String> = (0..50)
            .flat_map(|n| esims(&format!("ord_{n}"), 3))
            .map(|e| e.iccid)
            .collect();
        iccids.sort();
        iccids.dedup();
        assert_eq!(iccids.len(), 150);
    }

    #[test]
    fn esims_are_well_formed() {
        for n in 0..200 {
            let esim = esim(&format!("order-{n}"), n % 10);
            assert_eq!(esim.iccid.len(), 19);
            assert!(esim.iccid.starts_with("8999"));
            assert!(luhn_valid(&esim.iccid), "{}", esim.iccid);
            assert!(is_sandbox_iccid(&esim.iccid));
            assert_eq!(esim.matching_id.len(), 20);
            assert!(
                esim.matching_id
                    .bytes()
                    .all(|b| b.is_ascii_digit() || b.is_ascii_uppercase())
            );
            assert_eq!(esim.smdp_address, SMDP_ADDRESS);
            assert!(!esim.confirmation_code_required);
        }
    }

    #[test]
    fn non_sandbox_iccids_are_refused() {
        let good = esim("x", 0).iccid;
        let mut bad_check = good.clone();
        let last = bad_check.pop().unwrap();
        bad_check.push(if last == '0' { '1' } else { '0' });
        // A Luhn-valid ICCID outside the sandbox range.
        let payload = "894400000000000000";
        let foreign = format!("{payload}{}", luhn_check_digit(payload));
        assert!(luhn_valid(&foreign));
        for iccid in [
            bad_check.as_str(),
            foreign.as_str(),
            "",
            "8999",
            &good[..18],
        ] {
            assert!(!is_sandbox_iccid(iccid), "{iccid}");
        }
    }

    #[test]
    fn pending_refs_round_trip_and_belong_to_their_order() {
        let r = pending_ref("ord_1", 4);
        assert_eq!(parse_pending_ref("ord_1", &r), Ok(4));
        assert!(parse_pending_ref("ord_2", &r).is_err());
        assert!(parse_pending_ref("ord_1", "PEND-4-nonsense").is_err());
        assert!(parse_pending_ref("ord_1", &r.replacen("PEND-4", "PEND-5", 1)).is_err());
    }

    #[test]
    fn quantity_must_be_one_to_ten() {
        assert!(require_quantity(0).is_err());
        assert!(require_quantity(1).is_ok());
        assert!(require_quantity(10).is_ok());
        assert!(require_quantity(11).is_err());
    }

    #[test]
    fn url_encoding_and_hex_decoding() {
        assert_eq!(
            url_encode("https://shop.test/back?x=1&y=ä"),
            "https%3A%2F%2Fshop.test%2Fback%3Fx%3D1%26y%3D%C3%A4"
        );
        assert_eq!(hex_decode("00ffA0"), Some(vec![0, 255, 160]));
        assert_eq!(hex_decode("0"), None);
        assert_eq!(hex_decode("zz"), None);
        assert_eq!(hex_decode("é0"), None);
    }
}

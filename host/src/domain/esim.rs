//! eSIM delivery rules: ICCID checks and the activation code a device scans.

/// Whether the digits pass the Luhn check (ISO/IEC 7812), as ICCIDs should. Suppliers do
/// ship ICCIDs without a valid check digit, so a failure is a warning, not a refusal.
pub fn luhn_valid(digits: &str) -> bool {
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    let sum: u32 = digits
        .bytes()
        .rev()
        .enumerate()
        .map(|(i, b)| {
            let d = u32::from(b - b'0');
            if i % 2 == 1 {
                let dd = d * 2;
                if dd > 9 { dd - 9 } else { dd }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// The GSMA SGP.22 activation code: `LPA:1$<SM-DP+ address>$<matching id>`.
pub fn activation_code(smdp_address: &str, matching_id: &str) -> String {
    format!("LPA:1${smdp_address}${matching_id}")
}

/// Apple's universal link that opens eSIM installation on iOS 17.4 and later.
pub fn apple_install_link(activation_code: &str) -> String {
    let mut encoded = String::with_capacity(activation_code.len() + 16);
    for b in activation_code.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                encoded.push(b as char)
            }
            _ => encoded.push_str(&format!("%{b:02X}")),
        }
    }
    format!("https://esimsetup.apple.com/esim_qrcode_provisioning?carddata={encoded}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn luhn_accepts_valid_and_rejects_altered_numbers() {
        assert!(luhn_valid("79927398713"));
        assert!(!luhn_valid("79927398710"));
        assert!(!luhn_valid("7992a398713"));
        assert!(!luhn_valid(""));
    }

    #[test]
    fn activation_code_follows_sgp22() {
        assert_eq!(
            activation_code("smdp.example.com", "ABC-123"),
            "LPA:1$smdp.example.com$ABC-123"
        );
        assert!(apple_install_link("LPA:1$a.b$C").ends_with("carddata=LPA%3A1%24a.b%24C"));
    }
}

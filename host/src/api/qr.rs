//! QR images of activation codes: what a device scans to install an eSIM.

use qrcode::{Color, EcLevel, QrCode};

/// Pixels per QR module in PNGs; ~300 px for a typical activation code.
const SCALE: usize = 8;
/// Light modules around the code, as the QR spec asks.
const QUIET_ZONE: usize = 4;

fn encode(data: &str) -> QrCode {
    // Activation codes are ~60 characters: far within QR capacity at level M.
    QrCode::with_error_correction_level(data.as_bytes(), EcLevel::M)
        .expect("an activation code fits in a QR code")
}

/// An SVG image.
pub fn svg(data: &str) -> String {
    encode(data)
        .render::<qrcode::render::svg::Color>()
        .min_dimensions(256, 256)
        .quiet_zone(true)
        .build()
}

/// A grayscale PNG image.
pub fn png(data: &str) -> Vec<u8> {
    let code = encode(data);
    let width = code.width();
    let colors = code.to_colors();
    let side = (width + 2 * QUIET_ZONE) * SCALE;
    let mut pixels = vec![255u8; side * side];
    for (i, color) in colors.iter().enumerate() {
        if *color == Color::Dark {
            let (mx, my) = (i % width + QUIET_ZONE, i / width + QUIET_ZONE);
            for y in my * SCALE..(my + 1) * SCALE {
                pixels[y * side + mx * SCALE..y * side + (mx + 1) * SCALE].fill(0);
            }
        }
    }
    let mut out = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut out, side as u32, side as u32);
        encoder.set_color(png::ColorType::Grayscale);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder
            .write_header()
            .expect("writing to a Vec cannot fail");
        writer
            .write_image_data(&pixels)
            .expect("writing to a Vec cannot fail");
    }
    out
}

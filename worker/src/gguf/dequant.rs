//! Dequantization of ggml block formats (layouts from ggml's `block_q4_0`, `block_q4_1`,
//! `block_q8_0`: an f16 scale (and min), then packed quants; 32 elements per block).

use super::GgmlType;

fn f16_at(b: &[u8], i: usize) -> f32 {
    half::f16::from_bits(u16::from_le_bytes([b[i], b[i + 1]])).to_f32()
}

/// Dequantizes `numel` elements of type `ty` from `bytes`.
pub fn dequantize(ty: GgmlType, bytes: &[u8], numel: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(numel);
    match ty {
        GgmlType::F32 => out.extend(bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))),
        GgmlType::F16 => out.extend(bytes.chunks_exact(2).map(|c| half::f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())),
        GgmlType::BF16 => out.extend(bytes.chunks_exact(2).map(|c| half::bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())),
        GgmlType::Q4_0 => {
            for b in bytes.chunks_exact(18) {
                let d = f16_at(b, 0);
                let qs = &b[2..18];
                out.extend(qs.iter().map(|q| ((q & 0x0F) as i32 - 8) as f32 * d));
                out.extend(qs.iter().map(|q| ((q >> 4) as i32 - 8) as f32 * d));
            }
        }
        GgmlType::Q4_1 => {
            for b in bytes.chunks_exact(20) {
                let (d, m) = (f16_at(b, 0), f16_at(b, 2));
                let qs = &b[4..20];
                out.extend(qs.iter().map(|q| (q & 0x0F) as f32 * d + m));
                out.extend(qs.iter().map(|q| (q >> 4) as f32 * d + m));
            }
        }
        GgmlType::Q8_0 => {
            for b in bytes.chunks_exact(34) {
                let d = f16_at(b, 0);
                out.extend(b[2..34].iter().map(|q| (*q as i8) as f32 * d));
            }
        }
    }
    out.truncate(numel);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q4_1_low_nibbles_first_then_high() {
        let mut b = vec![0u8; 20];
        b[0..2].copy_from_slice(&half::f16::from_f32(0.5).to_bits().to_le_bytes());
        b[2..4].copy_from_slice(&half::f16::from_f32(-1.0).to_bits().to_le_bytes());
        b[4] = 0x3A; // element 0 = 0xA, element 16 = 0x3
        let v = dequantize(GgmlType::Q4_1, &b, 32);
        assert_eq!(v[0], 10.0 * 0.5 - 1.0);
        assert_eq!(v[16], 3.0 * 0.5 - 1.0);
        assert_eq!(v[1], -1.0);
    }

    #[test]
    fn q8_0_and_q4_0_are_signed() {
        let mut b = vec![0u8; 34];
        b[0..2].copy_from_slice(&half::f16::from_f32(2.0).to_bits().to_le_bytes());
        b[2] = (-3i8) as u8;
        assert_eq!(dequantize(GgmlType::Q8_0, &b, 32)[0], -6.0);
        let mut b = vec![0u8; 18];
        b[0..2].copy_from_slice(&half::f16::from_f32(1.0).to_bits().to_le_bytes());
        b[2] = 0x0F;
        let v = dequantize(GgmlType::Q4_0, &b, 32);
        assert_eq!((v[0], v[16]), (7.0, -8.0));
    }
}

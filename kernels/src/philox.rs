//! Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11), the
//! sampler's keyed RNG — here, next to the device port in `cuda/sampling.cu`, because both
//! sides must compute exactly the same numbers:
//! a counter-based generator, so the random number for (seed, token index, vocab id) is a
//! pure function — identical on any backend, in any batch, after any resume.

const M0: u32 = 0xD251_1F53;
const M1: u32 = 0xCD9E_8D57;
const W0: u32 = 0x9E37_79B9;
const W1: u32 = 0xBB67_AE85;

/// The four output words of Philox4x32 with 10 rounds.
pub fn philox4x32_10(counter: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let mut c = counter;
    let mut k = key;
    for round in 0..10 {
        if round > 0 {
            k[0] = k[0].wrapping_add(W0);
            k[1] = k[1].wrapping_add(W1);
        }
        let p0 = (M0 as u64) * (c[0] as u64);
        let p1 = (M1 as u64) * (c[2] as u64);
        let (hi0, lo0) = ((p0 >> 32) as u32, p0 as u32);
        let (hi1, lo1) = ((p1 >> 32) as u32, p1 as u32);
        c = [hi1 ^ c[1] ^ k[0], lo1, hi0 ^ c[3] ^ k[1], lo0];
    }
    c
}

/// The uniform draw in (0, 1) for vocab id `v` of token `t` of a request seeded `seed`:
/// `(x + 0.5) / 2^32` with x the first word of Philox4x32-10(key = seed, counter = (t, v, 0, 0)).
#[inline]
pub fn uniform(seed: u64, t: u32, v: u32) -> f64 {
    let x = philox4x32_10([t, v, 0, 0], [seed as u32, (seed >> 32) as u32])[0];
    (x as f64 + 0.5) / 4_294_967_296.0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Known-answer vectors of the Random123 distribution (kat_vectors, philox4x32 10 rounds).
    #[test]
    fn random123_known_answers() {
        assert_eq!(philox4x32_10([0, 0, 0, 0], [0, 0]), [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]);
        assert_eq!(philox4x32_10([u32::MAX; 4], [u32::MAX, u32::MAX]), [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd]);
        assert_eq!(
            philox4x32_10([0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344], [0xa4093822, 0x299f31d0]),
            [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1]
        );
    }

    #[test]
    fn uniform_is_open_interval_and_keyed() {
        for v in 0..1000 {
            let u = uniform(42, 3, v);
            assert!(u > 0.0 && u < 1.0);
        }
        assert_ne!(uniform(1, 0, 0), uniform(2, 0, 0));
        assert_ne!(uniform(1, 0, 0), uniform(1, 1, 0));
        assert_eq!(uniform(7, 5, 9), uniform(7, 5, 9));
    }
}

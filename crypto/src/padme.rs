//! PADME padding lengths (Nikitin et al., "Reducing Metadata Leakage from Encrypted Files and
//! Communication with PURBs", PETS 2019).

/// The PADME padded length of a plaintext of `len` bytes.
///
/// With `E = floor(log2 len)` and `S = floor(log2 E) + 1`, the low `E - S` bits of the length
/// are rounded up: `mask = (1 << (E - S)) - 1`, `padded = (len + mask) & !mask`. Lengths 0 and 1
/// are returned unchanged (E would be 0, where `log2 E` is undefined). The overhead is at most
/// about 12 % and the padded length reveals only `O(log log len)` bits. Saturates at `u64::MAX`
/// (unreachable for sealable sizes).
pub fn padme_len(len: u64) -> u64 {
    if len < 2 {
        return len;
    }
    let e = 63 - len.leading_zeros(); // floor(log2 len), >= 1
    let s = 32 - e.leading_zeros(); // floor(log2 e) + 1, the bit length of e
    let mask = (1u64 << (e - s)) - 1;
    len.checked_add(mask).map_or(u64::MAX, |v| v & !mask)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The definition, computed with floating point as in the paper.
    fn reference(l: u64) -> u64 {
        if l < 2 {
            return l;
        }
        let e = (l as f64).log2().floor() as u32;
        let s = (f64::from(e)).log2().floor() as u32 + 1;
        let last_bits = e - s;
        let mask = (1u64 << last_bits) - 1;
        (l + mask) & !mask
    }

    #[test]
    fn matches_reference_and_properties() {
        for l in 0..200_000u64 {
            let p = padme_len(l);
            assert_eq!(p, reference(l), "len {l}");
            assert!(p >= l);
            assert_eq!(padme_len(p), p, "idempotent at {l}");
            if l >= 2 {
                assert!((p - l) as f64 <= l as f64 * 0.12 + 1.0, "overhead at {l}");
            }
        }
        for shift in 17..63 {
            for l in [(1u64 << shift) - 1, 1 << shift, (1 << shift) + 1] {
                assert_eq!(padme_len(l), reference(l), "len {l}");
            }
        }
        assert_eq!(padme_len(u64::MAX), u64::MAX);
    }

    #[test]
    fn samples() {
        let cases = [
            (0, 0),
            (1, 1),
            (2, 2),
            (8, 8),
            (9, 10),
            (100, 104),
            (1000, 1024),
            (4096, 4096),
            (65_545, 67_584),
        ];
        for (l, p) in cases {
            assert_eq!(padme_len(l), p, "len {l}");
        }
    }
}

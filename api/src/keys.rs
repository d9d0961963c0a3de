//! The subscriber-key and CSR-signature rules certd applies, as pure
//! functions over the key's numbers and the algorithm's OID, so that an RA
//! (ra-web's CSR view, ra-cli) judges a CSR exactly as certd will.

use num_bigint::BigUint;

/// The one RSA public exponent certd accepts.
pub const RSA_EXPONENT: u64 = 65_537;

/// The RSA modulus sizes certd issues for.
pub const RSA_SIZES: [u32; 3] = [2048, 3072, 4096];

/// Why certd refuses a subscriber key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyRefusal {
    /// The key is weak or broken (`weak_key`).
    Weak(String),
    /// The key is sound but of a size certd does not issue for
    /// (`key_not_permitted`).
    NotPermitted(String),
}

impl KeyRefusal {
    /// What is wrong and what to do.
    pub fn message(&self) -> &str {
        match self {
            KeyRefusal::Weak(m) | KeyRefusal::NotPermitted(m) => m,
        }
    }
}

/// The number of significant bits of a big-endian unsigned integer.
pub fn bit_length(be: &[u8]) -> u32 {
    let skip = be.iter().take_while(|&&b| b == 0).count();
    let Some(&first) = be.get(skip) else {
        return 0;
    };
    let bits = (be.len() - skip) as u64 * 8 - u64::from(first.leading_zeros());
    u32::try_from(bits).unwrap_or(u32::MAX)
}

/// Checks an RSA public key given as its big-endian modulus and exponent:
/// at least 2048 bits, exponent 65537, an odd modulus without a small
/// prime factor or close primes; and one of [`RSA_SIZES`]. Returns the
/// modulus size.
pub fn check_rsa(modulus: &[u8], exponent: &[u8]) -> Result<u32, KeyRefusal> {
    let bits = bit_length(modulus);
    if bits < 2048 {
        return Err(KeyRefusal::Weak(format!(
            "the RSA key has {bits} bits; at least 2048 are required: generate a new key pair"
        )));
    }
    let e = exponent.iter().skip_while(|b| **b == 0).collect::<Vec<_>>();
    if e != [&0x01, &0x00, &0x01] {
        return Err(KeyRefusal::Weak(
            "the RSA public exponent must be 65537 (small exponents are weak; certd accepts no other): generate a new key pair".into(),
        ));
    }
    if modulus.last().is_some_and(|b| b & 1 == 0) {
        return Err(KeyRefusal::Weak(
            "the RSA modulus is even, so this is not a usable RSA key: generate a new key pair"
                .into(),
        ));
    }
    check_rsa_modulus(modulus)?;
    if !RSA_SIZES.contains(&bits) {
        return Err(KeyRefusal::NotPermitted(format!(
            "RSA modulus of {bits} bits is not supported: use 2048, 3072 or 4096 bits"
        )));
    }
    Ok(bits)
}

/// The CSR signature algorithms certd verifies (dotted OIDs): RSA PKCS#1
/// v1.5 with SHA-256/384/512, ECDSA with SHA-256/384, Ed25519. SHA-1,
/// MD5, SHA-224, RSASSA-PSS and DSA are refused.
pub const CSR_SIGNATURE_ALGORITHMS: [(&str, &str); 6] = [
    ("1.2.840.113549.1.1.11", "RSA PKCS#1 v1.5 with SHA-256"),
    ("1.2.840.113549.1.1.12", "RSA PKCS#1 v1.5 with SHA-384"),
    ("1.2.840.113549.1.1.13", "RSA PKCS#1 v1.5 with SHA-512"),
    ("1.2.840.10045.4.3.2", "ECDSA with SHA-256"),
    ("1.2.840.10045.4.3.3", "ECDSA with SHA-384"),
    ("1.3.101.112", "Ed25519"),
];

/// Checks a CSR's signature algorithm (dotted OID) is one certd verifies.
pub fn check_csr_signature_algorithm(oid: &str) -> Result<(), String> {
    if CSR_SIGNATURE_ALGORITHMS.iter().any(|(o, _)| *o == oid) {
        return Ok(());
    }
    Err(format!(
        "the CSR is signed with algorithm {oid}, which certd does not accept (SHA-1 and MD5 are broken): \
         ask for a CSR signed with one of: {}",
        CSR_SIGNATURE_ALGORITHMS
            .iter()
            .map(|(_, n)| *n)
            .collect::<Vec<_>>()
            .join(", ")
    ))
}

/// The odd primes up to 751, which an RSA modulus must not be divisible by
/// (the list of Boulder's `goodkey`: a modulus with a small factor comes
/// from a broken key generator and is factored by trial division).
fn small_primes() -> impl Iterator<Item = u32> {
    (3u32..=751).step_by(2).filter(|&n| {
        (3u32..)
            .step_by(2)
            .take_while(|d| d * d <= n)
            .all(|d| n % d != 0)
    })
}

/// Rounds of Fermat's factorisation tried on an RSA modulus. Primes closer
/// than about 2^(bits/4) apart fall to the first round; a hundred rounds
/// is what Boulder and ZLint's close-primes check use.
const FERMAT_ROUNDS: u32 = 100;

/// Whether `x` is a perfect square: residue filters first (almost every
/// non-square fails one), then an integer square root.
fn is_square(x: &BigUint) -> bool {
    for m in [64u32, 63, 65, 11] {
        let r = (x % m).iter_u32_digits().next().unwrap_or(0);
        if !(0..m).any(|k| (k * k) % m == r) {
            return false;
        }
    }
    let s = x.sqrt();
    &s * &s == *x
}

/// Refuses an RSA modulus with a small prime factor, or whose two primes
/// are so close that Fermat's method factors it (TLS Baseline Requirements
/// 6.1.1.3: keys known to be weak are rejected).
fn check_rsa_modulus(modulus: &[u8]) -> Result<(), KeyRefusal> {
    let n = BigUint::from_bytes_be(modulus);
    if let Some(p) = small_primes().find(|&p| (&n % p).bits() == 0) {
        return Err(KeyRefusal::Weak(format!(
            "the RSA modulus is divisible by {p}: the key is broken; generate a new key pair"
        )));
    }
    let mut a = n.sqrt();
    if &a * &a < n {
        a += 1u32;
    }
    // b2 = a² − n, moved along as a grows: (a+1)² − n = b2 + 2a + 1.
    let mut b2 = &a * &a - &n;
    for _ in 0..FERMAT_ROUNDS {
        if is_square(&b2) {
            return Err(KeyRefusal::Weak(
                "the RSA modulus' two primes are so close that Fermat's method factors it: \
                 the key is broken; generate a new key pair"
                    .into(),
            ));
        }
        b2 += &a * 2u32 + 1u32;
        a += 1u32;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn modulus(n: u128) -> Vec<u8> {
        n.to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect()
    }

    fn refused(n: u128) -> Option<String> {
        check_rsa_modulus(&modulus(n)).err().map(|e| match e {
            KeyRefusal::Weak(m) => m,
            other => panic!("{other:?}"),
        })
    }

    #[test]
    fn the_small_primes_are_the_odd_primes_to_751() {
        let primes: Vec<u32> = small_primes().collect();
        assert_eq!(primes.len(), 132, "π(751) = 133, without 2");
        assert_eq!(&primes[..5], &[3, 5, 7, 11, 13]);
        assert_eq!(primes.last(), Some(&751));
    }

    #[test]
    fn perfect_squares_pass_the_residue_filters() {
        for x in 0u64..20_000 {
            let s = (x as f64).sqrt() as u64;
            let square = (s.saturating_sub(1)..=s + 1).any(|r| r * r == x);
            assert_eq!(is_square(&BigUint::from(x)), square, "{x}");
        }
    }

    #[test]
    fn moduli_with_small_factors_or_close_primes_are_refused() {
        // 2^31 − 1 and 2^61 − 1 are prime.
        let (m31, m61) = ((1u128 << 31) - 1, (1u128 << 61) - 1);
        assert_eq!(refused(m31 * m61), None, "far-apart primes above 751");
        let m = refused(3 * m61).expect("a factor of 3");
        assert!(m.contains("divisible by 3"), "{m}");
        let m = refused(751 * m61).expect("a factor of 751");
        assert!(m.contains("751"), "{m}");
        assert_eq!(refused(757 * m61), None, "757 is above the list");
        // 1000003 and 1000033 are primes 30 apart: the first round.
        let m = refused(1_000_003 * 1_000_033).expect("close primes");
        assert!(m.contains("Fermat"), "{m}");
        // 1019023 is found in round 45 of 100; 1060009 only in round 438.
        assert!(refused(1_000_003 * 1_019_023).is_some(), "round 45");
        assert_eq!(refused(1_000_003 * 1_060_009), None, "beyond 100 rounds");
    }

    #[test]
    fn rsa_keys_follow_certds_rules() {
        let e = [0x01, 0x00, 0x01];
        // 2^2047 + 1 is odd, 2048 bits, divisible by 3 (2^odd + 1 is).
        let mut n = vec![0u8; 256];
        n[0] = 0x80;
        n[255] = 0x01;
        assert!(
            matches!(check_rsa(&n, &e), Err(KeyRefusal::Weak(m)) if m.contains("divisible by 3"))
        );
        assert!(
            matches!(check_rsa(&n[..128], &e), Err(KeyRefusal::Weak(m)) if m.contains("1024 bits"))
        );
        assert!(matches!(check_rsa(&n, &[3]), Err(KeyRefusal::Weak(m)) if m.contains("65537")));
        let mut even = n.clone();
        even[255] = 0x02;
        assert!(matches!(check_rsa(&even, &e), Err(KeyRefusal::Weak(m)) if m.contains("even")));
        assert_eq!(bit_length(&[0, 0, 0x01]), 1);
        assert_eq!(bit_length(&n), 2048);
    }

    #[test]
    fn csr_signature_algorithms() {
        assert!(check_csr_signature_algorithm("1.2.840.10045.4.3.2").is_ok());
        for refused in [
            "1.2.840.113549.1.1.5",
            "1.2.840.113549.1.1.4",
            "1.2.840.10045.4.1",
            "1.2.840.113549.1.1.10",
        ] {
            assert!(check_csr_signature_algorithm(refused).is_err(), "{refused}");
        }
    }
}

//! Random bytes into every parser: no panic, and the outputs stay within bounds.

use super::{baggage, traceparent, tracestate};

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Bytes biased towards the grammars' interesting characters.
fn input(rng: &mut Rng, alphabet: &[u8]) -> Vec<u8> {
    let len = match rng.below(4) {
        0 => rng.below(8),
        1 => rng.below(64),
        2 => 55 + rng.below(3),
        _ => rng.below(10_000),
    };
    (0..len)
        .map(|_| {
            if rng.below(4) == 0 {
                rng.next() as u8
            } else {
                alphabet[rng.below(alphabet.len() as u64) as usize]
            }
        })
        .collect()
}

#[test]
fn random_bytes_never_panic() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let alphabet = b"0123456789abcdefABCDEF-=,;% \t.@*/_~caracl\x00\x7f\xff";
    for _ in 0..20_000 {
        let bytes = input(&mut rng, alphabet);
        if let Some(tp) = traceparent::parse(&bytes) {
            assert_ne!(tp.trace_id, [0; 16]);
            assert_ne!(tp.parent_id, [0; 8]);
        }
        if let Some(ts) = tracestate::parse(&bytes) {
            assert!(ts.len() <= bytes.len());
            assert!(ts.split(',').count() <= tracestate::MAX_MEMBERS);
        }
        let b = baggage::parse(&bytes);
        assert!(b.entries.len() <= baggage::MAX_BAGGAGE_MEMBERS);
        assert!(b.entries.iter().all(|(k, _)| !baggage::is_caracal(k)));
        let e = baggage::encode(&[("caracal.session", "s")], &b.entries);
        let header = e.header.expect("the caracal entry always fits");
        assert!(header.len() <= baggage::MAX_BAGGAGE_BYTES);
        assert!(header.split(',').count() <= baggage::MAX_BAGGAGE_MEMBERS);
    }
}

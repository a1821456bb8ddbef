//! The seeded stream of changes a child runs: inserts on a small key space,
//! about one in ten a removal.

/// One change of the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Insert `value` under `key`.
    Put {
        /// The key, `k<n>`.
        key: String,
        /// A value unique to this change (see [`value_of`]).
        value: u64,
    },
    /// Remove `key`.
    Del {
        /// The key.
        key: String,
    },
}

impl Op {
    /// The key the change concerns.
    #[must_use]
    pub fn key(&self) -> &str {
        match self {
            Op::Put { key, .. } | Op::Del { key } => key,
        }
    }
}

/// Values encode the stream and position that wrote them, so a checker can
/// tell which change a stored value came from.
const SEQ_SPAN: u64 = 1 << 32;

/// The value change `index` of stream `seed` writes.
#[must_use]
pub fn value_of(seed: u64, index: u64) -> u64 {
    (seed % SEQ_SPAN) * SEQ_SPAN + (index % SEQ_SPAN)
}

/// The stream seed and change index a value was written by.
#[must_use]
pub fn origin_of(value: u64) -> (u64, u64) {
    (value / SEQ_SPAN, value % SEQ_SPAN)
}

/// Change `index` of the stream `seed` over `keys` keys. Random access, so
/// the child and the checker agree without sharing state.
#[must_use]
pub fn op_at(seed: u64, keys: u32, index: u64) -> Op {
    let mut rng = fastrand::Rng::with_seed(
        seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ index.wrapping_mul(0xD1B5_4A32_D192_ED03),
    );
    let key = format!("k{}", rng.u32(0..keys.max(1)));
    if rng.u8(0..10) == 0 {
        Op::Del { key }
    } else {
        Op::Put {
            key,
            value: value_of(seed, index),
        }
    }
}

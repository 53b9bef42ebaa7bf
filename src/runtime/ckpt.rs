//! (adapter to src/checkpoint; written when it lands)

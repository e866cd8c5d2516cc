//! Multicast peer store (being written).

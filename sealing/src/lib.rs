//! The sealed-model format of Veil (filled by the sealing work).

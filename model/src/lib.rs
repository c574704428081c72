//! The inference engine of Veil (filled by the model work).

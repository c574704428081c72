//! The Veil client library.

//! End-to-end tests of Veil; the tests live in `tests/tests/`.

//! `veil`
fn main() {}

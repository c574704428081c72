//! `veil-server`: serves a sealed model from inside a TEE (filled by the server work).

fn main() {
    eprintln!("veil-server: not built yet; see the open issues");
    std::process::exit(1);
}

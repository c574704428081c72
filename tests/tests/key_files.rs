//! Model key files open to group or others are refused by `veil provision` with the fix
//! named, unless `--allow-insecure-key-file` is given.

use std::os::unix::fs::PermissionsExt;

use veil_tests::harness::{text, veil, Fixture};

#[test]
fn provision_refuses_a_key_file_others_can_read_and_names_the_fix() {
    let f = Fixture::new();
    let server = f.start(&[]);
    let policy = f.good_policy().display().to_string();
    std::fs::set_permissions(&f.key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let args = [
        "provision",
        server.url(),
        "--policy",
        &policy,
        "--key",
        &f.key_arg(),
    ];
    let o = veil(&args);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let fix = format!("chmod 600 {}", f.key.display());
    assert!(text(&o).contains(&fix), "{}", text(&o));
    server.assert_never_provisioned();

    let mut forced = args.to_vec();
    forced.push("--allow-insecure-key-file");
    let o = veil(&forced);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(server.ready()["state"], "ready");
}

//! The commands that answer on standard output, run as the real binary into a reader that
//! has already gone (`hermit-relay check-config | head -1`): they end quietly, never with
//! Rust's "failed printing to stdout" panic.

mod common;

use std::io::Write;
use std::process::{Command, Output, Stdio};

use common::TestDb;

/// Runs `hermit-relay ARGS` on `db` with `stdin`, its standard output a pipe whose reading
/// end is closed before the command can write: every write it makes meets a broken pipe.
fn into_closed_pipe(db: &TestDb, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_hermit-relay"))
        .args(args)
        .env("HERMIT__DATABASE__URL", &db.url)
        .env("HERMIT__AUTH__PRIVATE_KEY_FILE", db.key_path())
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The only reading end: dropped at once, long before the command has its answer ready
    // (it loads its settings and opens its database first).
    drop(child.stdout.take());
    let mut input = child.stdin.take().unwrap();
    // A command that reads no input may already be gone: that is its business.
    let _ = input.write_all(stdin.as_bytes());
    drop(input);
    child.wait_with_output().unwrap()
}

fn assert_quiet(args: &[&str], out: &Output) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{args:?} panicked: {stderr}");
    assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
}

#[test]
fn commands_whose_reader_went_away_end_quietly() {
    let db = TestDb::sqlite();
    let add = ["users", "add", "ada@example.com"];
    assert_quiet(
        &add,
        &into_closed_pipe(&db, &add, "correct horse battery\n"),
    );
    for args in [
        &["check-config"][..],
        &["users", "list"],
        &["--json", "users", "list"],
        &["machines", "list"],
        &["migrate"],
    ] {
        assert_quiet(args, &into_closed_pipe(&db, args, ""));
    }
    // The user really was added: the command did its work before its answer was lost.
    let out = Command::new(env!("CARGO_BIN_EXE_hermit-relay"))
        .args(["users", "list"])
        .env("HERMIT__DATABASE__URL", &db.url)
        .env("HERMIT__AUTH__PRIVATE_KEY_FILE", db.key_path())
        .output()
        .unwrap();
    assert!(out.status.success());
    let listed = String::from_utf8(out.stdout).unwrap();
    assert!(listed.contains("ada@example.com"), "{listed}");
}

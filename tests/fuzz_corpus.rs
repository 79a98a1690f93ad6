//! Replays every file of the fuzz corpus (`fuzz/corpus/<target>/`) through the very checks the
//! fuzz targets run (`fuzz/checks.rs`), so CI covers what the fuzzer found without nightly or
//! libFuzzer. A failure names the file; `cargo fuzz run <target> <file>` reproduces it.

#[path = "../fuzz/checks.rs"]
mod checks;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;

/// Runs `check` on every file of one target's corpus; returns each file's name and result.
fn replay<T>(target: &str, check: impl Fn(&[u8]) -> T) -> Vec<(String, T)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("failed to read fuzz corpus {}: {e}", dir.display()))
        .map(|e| e.expect("fuzz corpus entry").path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "fuzz corpus {} is empty", dir.display());
    files
        .into_iter()
        .map(|path| {
            let data = std::fs::read(&path)
                .unwrap_or_else(|e| panic!("failed to read {}: {e}", path.display()));
            let result = catch_unwind(AssertUnwindSafe(|| check(&data)))
                .unwrap_or_else(|_| panic!("fuzz target {target} fails on {}", path.display()));
            (
                path.file_name().unwrap().to_string_lossy().into_owned(),
                result,
            )
        })
        .collect()
}

#[test]
fn fuzz_corpus_record_open() {
    // The seeds sealed with the target's keys must still open; if they do not, the record
    // layer or those keys changed and the fuzzer no longer gets past the tag check.
    for (name, opened) in replay("record_open", checks::record_open) {
        if name.starts_with("seed-sealed-") {
            assert!(opened > 0, "sealed seed {name} no longer opens");
        }
    }
}

#[test]
fn fuzz_corpus_records() {
    replay("records", checks::records_split);
}

#[test]
fn fuzz_corpus_proto() {
    replay("proto", checks::proto);
}

#[test]
fn fuzz_corpus_packet() {
    replay("packet", checks::packet);
}

#[test]
fn fuzz_corpus_admission() {
    let fed: usize = replay("admission", checks::admission)
        .iter()
        .map(|(_, n)| *n)
        .sum();
    assert!(fed > 0, "the admission corpus feeds no datagram");
}

#[test]
fn fuzz_corpus_client_handshake() {
    let fed: usize = replay("client_handshake", checks::client_handshake)
        .iter()
        .map(|(_, n)| *n)
        .sum();
    assert!(fed > 0, "the client_handshake corpus feeds no datagram");
}

#[test]
fn fuzz_corpus_rekey() {
    let fed: usize = replay("rekey", checks::rekey).iter().map(|(_, n)| *n).sum();
    assert!(fed > 0, "the rekey corpus feeds no control record");
}

#[test]
fn fuzz_corpus_cid() {
    // Some seeds are the fuzz target's own sealed CID records: they open.
    let opened: usize = replay("cid", checks::cid).iter().map(|(_, n)| *n).sum();
    assert!(opened > 0, "no record of the cid corpus opens");
}

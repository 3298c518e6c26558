//! Replays `fuzz/corpus/tls_records/` through `nvmf_tls::fuzz::records`, the
//! entry point of the `tls_records` cargo-fuzz target, so every input the
//! fuzzer kept is re-checked on stable Rust.
//!
//! `NVMF_WRITE_SEEDS=1 cargo test -p nvmf-tls --test fuzz_corpus` rewrites the
//! seeds (recorded real flights and op lists from `nvmf_tls::fuzz::seeds`).

use std::path::PathBuf;

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/tls_records")
}

#[test]
fn seeds_run() {
    let seeds = nvmf_tls::fuzz::seeds();
    assert!(seeds.len() >= 10);
    if std::env::var_os("NVMF_WRITE_SEEDS").is_some() {
        std::fs::create_dir_all(corpus_dir()).unwrap();
        for (name, data) in &seeds {
            std::fs::write(corpus_dir().join(name), data).unwrap();
        }
    }
    for (_, data) in &seeds {
        nvmf_tls::fuzz::records(data);
    }
}

#[test]
fn corpus_replays() {
    let dir = corpus_dir();
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        nvmf_tls::fuzz::records(&data);
        n += 1;
    }
    assert!(n >= 10, "only {n} inputs in {}", dir.display());
}

#[test]
fn short_and_odd_inputs() {
    for sel in 0..=255u8 {
        nvmf_tls::fuzz::records(&[sel]);
        nvmf_tls::fuzz::records(&[sel, 0x16, 0x03, 0x01, 0xff, 0xff, 1, 2, 3]);
    }
    nvmf_tls::fuzz::records(&[]);
}

//! Replays `fuzz/corpus/tls_pdu/` through `nvmf_target::fuzz_tls_pdu_input`,
//! the entry point of the `tls_pdu` cargo-fuzz target, so every input the
//! fuzzer kept is re-checked on stable Rust.
//!
//! `NVMF_WRITE_SEEDS=1 cargo test -p nvmf-target --test fuzz_tls_pdu` rewrites
//! the seeds (`nvmf_target::testing_tls::seeds`).

use std::path::PathBuf;

use nvmf_target::testing_tls::{input, op, seeds};

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/tls_pdu")
}

#[test]
fn seeds_run() {
    let seeds = seeds();
    assert!(seeds.len() >= 15);
    if std::env::var_os("NVMF_WRITE_SEEDS").is_some() {
        std::fs::create_dir_all(corpus_dir()).unwrap();
        for (name, data) in &seeds {
            std::fs::write(corpus_dir().join(name), data).unwrap();
        }
    }
    for (_, data) in &seeds {
        nvmf_target::fuzz_tls_pdu_input(data);
    }
}

#[test]
fn corpus_replays() {
    let n = nvmf_proto::fuzz::replay_corpus(&corpus_dir(), nvmf_target::fuzz_tls_pdu_input);
    assert!(n >= 15, "only {n} inputs in {}", corpus_dir().display());
}

#[test]
fn short_and_odd_inputs() {
    nvmf_target::fuzz_tls_pdu_input(&[]);
    for a in 0..=255u8 {
        nvmf_target::fuzz_tls_pdu_input(&[a]);
        nvmf_target::fuzz_tls_pdu_input(&[a, a]);
        nvmf_target::fuzz_tls_pdu_input(&[0, 1, a, 0, 0, 1, 2, 0x00, 0x80]);
    }
    // Every op kind on an empty stream and on a one-byte one.
    for kind in 0..16u8 {
        for body in [&[][..], &[0u8][..]] {
            nvmf_target::fuzz_tls_pdu_input(&input(1, &[[kind, 0, 0, 0], [kind, 255, 255, 255]], 0, body));
        }
    }
    nvmf_target::fuzz_tls_pdu_input(&input(0, &[op::rec(1), op::key_update(1 << 23, true)], 1, &[]));
}

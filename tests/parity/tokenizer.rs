//! Tokenizer parity with Hugging Face transformers, against tests/fixtures/tokenizer/*.json
//! (made by tests/reference/make_tokenizer_goldens.py): every golden string must encode to
//! exactly transformers' ids (special tokens added as the tokenizer's post-processor says),
//! and decode(encode(s)) without special tokens must give s back. Both tokenizers are
//! byte-level BPE without a normalizer, so every valid UTF-8 string round-trips; the golden
//! records transformers' own round-trip result per string, and only a string transformers
//! itself cannot round-trip would be excused (there are none today, and the count is
//! asserted).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Instant;

use serde::Deserialize;
use tokenfleet_tests::parity;
use tokenfleet_worker::model::tokenizer::ModelTokenizer;

const MIN_STRINGS: usize = 1000;

#[derive(Debug, Deserialize)]
struct Golden {
    name: String,
    summary: Summary,
    cases: Vec<Case>,
}

#[derive(Debug, Deserialize)]
struct Summary {
    strings: usize,
    not_roundtrip: usize,
}

#[derive(Debug, Deserialize)]
struct Case {
    text: String,
    ids: Vec<u32>,
    roundtrip: bool,
}

fn check(name: &str, tokenizer_json: &Path, first_id: Option<u32>) {
    let started = Instant::now();
    let golden: Golden = parity::read_fixture(&format!("tokenizer/{name}.json")).unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(golden.name, name);
    assert_eq!(golden.cases.len(), golden.summary.strings);
    assert!(golden.cases.len() >= MIN_STRINGS, "{name}: only {} golden strings", golden.cases.len());
    let tok = ModelTokenizer::load(tokenizer_json).unwrap_or_else(|e| panic!("{e}"));

    let mut mismatches = Vec::new();
    let mut not_roundtrip = Vec::new();
    let (mut encoded, mut roundtripped, mut excused, mut ids_total) = (0usize, 0usize, 0usize, 0usize);
    for (i, c) in golden.cases.iter().enumerate() {
        if let Some(bos) = first_id {
            assert_eq!(c.ids.first(), Some(&bos), "{name} case {i}: golden does not start with BOS {bos}");
        }
        let ids = tok.encode(&c.text, true).unwrap_or_else(|e| panic!("{name} case {i}: encode failed: {e}"));
        encoded += 1;
        ids_total += ids.len();
        if ids != c.ids {
            let at = ids.iter().zip(&c.ids).position(|(a, b)| a != b).unwrap_or(ids.len().min(c.ids.len()));
            mismatches.push(format!(
                "case {i} {:?}: first difference at {at}: ours {:?} vs transformers {:?} (lengths {} / {})",
                c.text,
                &ids[at..(at + 6).min(ids.len())],
                &c.ids[at..(at + 6).min(c.ids.len())],
                ids.len(),
                c.ids.len()
            ));
        }
        if !c.roundtrip {
            excused += 1;
            continue;
        }
        let plain = tok.encode(&c.text, false).unwrap_or_else(|e| panic!("{name} case {i}: encode failed: {e}"));
        let back = tok.decode(&plain, false).unwrap_or_else(|e| panic!("{name} case {i}: decode failed: {e}"));
        if back == c.text {
            roundtripped += 1;
        } else {
            not_roundtrip.push(format!("case {i}: {:?} decodes back as {back:?}", c.text));
        }
    }
    eprintln!(
        "tokenizer {name}: {encoded} strings ({ids_total} ids), {} id mismatches, {roundtripped} round-trips, {} round-trip \
         failures, {excused} excused by the reference, {:.2} s",
        mismatches.len(),
        not_roundtrip.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        mismatches.is_empty(),
        "{name}: {} strings tokenize differently from transformers:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
    assert!(not_roundtrip.is_empty(), "{name}: {} strings do not round-trip:\n{}", not_roundtrip.len(), not_roundtrip.join("\n"));
    assert_eq!(excused, golden.summary.not_roundtrip);
    assert_eq!(encoded, golden.cases.len());
    assert_eq!(roundtripped + excused, golden.cases.len());
}

/// The vendored Llama-3.1 tokenizer (what gen-model writes and Minitron uses); BOS first.
#[test]
fn llama31_tokenizer_matches_transformers() {
    check("llama31", &parity::llama31_tokenizer_path(), Some(128000));
}

/// The tokenizer `convert-gguf` rebuilds from the SmolLM2 GGUF's metadata.
#[test]
fn smollm2_tokenizer_matches_transformers() {
    let dir = parity::smollm2_dir().unwrap_or_else(|e| panic!("{e:#}"));
    check("smollm2", &dir.join("tokenizer.json"), None);
}

//! Prompt tokenization: openpi's PaligemmaTokenizer semantics over a tokenizer.json.

use std::path::Path;
use std::sync::{Mutex, OnceLock};

use pi0_mps::model::tokenizer::{
    clean_prompt, load_tokenizer, tokenizer_path, BpeTokenizer, ByteTokenizer, PromptTokenizer,
    DEFAULT_MAX_LEN,
};

// ---------------------------------------------------------------------------------------------
// A logger that keeps warnings, to check the truncation warning.
// ---------------------------------------------------------------------------------------------

struct Capture(Mutex<Vec<String>>);

impl log::Log for Capture {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= log::Level::Warn
    }
    fn log(&self, r: &log::Record) {
        if self.enabled(r.metadata()) {
            self.0.lock().unwrap().push(r.args().to_string());
        }
    }
    fn flush(&self) {}
}

fn captured() -> &'static Capture {
    static CAPTURE: OnceLock<&'static Capture> = OnceLock::new();
    CAPTURE.get_or_init(|| {
        let c: &'static Capture = Box::leak(Box::new(Capture(Mutex::new(Vec::new()))));
        log::set_logger(c).expect("no other logger in this test binary");
        log::set_max_level(log::LevelFilter::Warn);
        c
    })
}

fn warnings_containing(s: &str) -> usize {
    captured()
        .0
        .lock()
        .unwrap()
        .iter()
        .filter(|m| m.contains(s))
        .count()
}

// ---------------------------------------------------------------------------------------------
// The SentencePiece-made fixture (tests/data/tokenizer-spm-tiny/README.md).
// ---------------------------------------------------------------------------------------------

fn fixture_dir() -> &'static Path {
    Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/tokenizer-spm-tiny"
    ))
}

#[test]
fn matches_sentencepiece_on_every_fixture_prompt() {
    let tok = BpeTokenizer::from_file(&fixture_dir().join("tokenizer.json")).unwrap();
    assert_eq!(tok.bos_id(), 2);
    let expected: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture_dir().join("expected.json")).unwrap(),
    )
    .unwrap();
    let cases = expected.as_array().unwrap();
    assert!(cases.len() > 200);
    let mut truncated = 0;
    for case in cases {
        let prompt = case["prompt"].as_str().unwrap();
        let ids: Vec<u32> = case["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        if ids.len() == DEFAULT_MAX_LEN {
            truncated += 1;
        }
        let got = tok.encode_prompt(prompt, DEFAULT_MAX_LEN).unwrap();
        assert_eq!(got, ids, "prompt {prompt:?}");
    }
    // The fixture covers cut prompts too.
    assert!(truncated > 10);
}

#[test]
fn load_tokenizer_finds_the_file_beside_the_checkpoint() {
    let tok = load_tokenizer(fixture_dir()).unwrap();
    assert!(
        tok.describe().contains("BPE tokenizer"),
        "{}",
        tok.describe()
    );
    assert_eq!(
        tok.encode_prompt("pick up the red block", 48).unwrap(),
        [2, 427, 376, 295, 407, 403, 5]
    );
    // The json file itself works as the path too.
    let file = fixture_dir().join("tokenizer.json");
    assert_eq!(tokenizer_path(&file), file);
    let tok = load_tokenizer(&file).unwrap();
    assert_eq!(tok.encode_prompt("", 48).unwrap(), [2, 5]);
}

// ---------------------------------------------------------------------------------------------
// A hand-made tokenizer.json with ids worked out by hand.
// ---------------------------------------------------------------------------------------------

/// Vocabulary: specials 0-3, "\n"=4, "▁"=5, a=6 b=7 c=8 ab=9 bc=10 ▁a=11 ▁ab=12 abc=13,
/// <0x00>..<0xFF> = 20..275. Merge ranks: a+b 0, b+c 1, ▁+a 2, ▁a+b 3, ab+c 4.
fn tiny_json(string_merges: bool) -> String {
    let mut vocab = serde_json::Map::new();
    for (p, i) in [
        ("<pad>", 0),
        ("<eos>", 1),
        ("<bos>", 2),
        ("<unk>", 3),
        ("\n", 4),
        ("▁", 5),
        ("a", 6),
        ("b", 7),
        ("c", 8),
        ("ab", 9),
        ("bc", 10),
        ("▁a", 11),
        ("▁ab", 12),
        ("abc", 13),
    ] {
        vocab.insert(p.to_string(), i.into());
    }
    for b in 0..256u32 {
        vocab.insert(format!("<0x{b:02X}>"), (20 + b).into());
    }
    let pairs = [("a", "b"), ("b", "c"), ("▁", "a"), ("▁a", "b"), ("ab", "c")];
    let merges: Vec<serde_json::Value> = pairs
        .iter()
        .map(|(a, b)| {
            if string_merges {
                format!("{a} {b}").into()
            } else {
                serde_json::json!([a, b])
            }
        })
        .collect();
    serde_json::json!({
        "version": "1.0",
        "added_tokens": [
            {"id": 0, "content": "<pad>", "special": true, "normalized": false},
            {"id": 1, "content": "<eos>", "special": true, "normalized": false},
            {"id": 2, "content": "<bos>", "special": true, "normalized": false},
            {"id": 3, "content": "<unk>", "special": true, "normalized": false},
            {"id": 4, "content": "\n", "special": false, "normalized": false}
        ],
        "normalizer": {"type": "Replace", "pattern": {"String": " "}, "content": "▁"},
        "pre_tokenizer": null,
        "model": {"type": "BPE", "unk_token": "<unk>", "fuse_unk": true, "byte_fallback": true,
                  "vocab": vocab, "merges": merges}
    })
    .to_string()
}

fn tiny() -> BpeTokenizer {
    BpeTokenizer::from_json_str(&tiny_json(false), "tiny").unwrap()
}

#[test]
fn hand_computed_ids() {
    let t = tiny();
    let enc = |s: &str| t.encode_prompt(s, 48).unwrap();
    // a+b (rank 0) first, then ab+c (rank 4).
    assert_eq!(enc("abc"), [2, 13, 4]);
    // b+c only.
    assert_eq!(enc("bca"), [2, 10, 6, 4]);
    // "c▁ab": a+b (rank 0) wins over ▁+a (rank 2), and ▁+ab is no merge.
    assert_eq!(enc("c ab"), [2, 8, 5, 9, 4]);
    // "▁ab" via ▁a + b when nothing earlier competes: "c▁a" then b... "▁ac": ▁+a, then no merge.
    assert_eq!(enc("c ac"), [2, 8, 11, 8, 4]);
    // Outer whitespace is stripped, "_" and "\n" become spaces.
    assert_eq!(enc("  a_b\nc \t"), [2, 6, 5, 7, 5, 8, 4]);
    // Unknown characters fall back to UTF-8 bytes: é = C3 A9, 🤖 = F0 9F A4 96.
    assert_eq!(enc("é"), [2, 20 + 0xC3, 20 + 0xA9, 4]);
    assert_eq!(
        enc("a🤖"),
        [2, 6, 20 + 0xF0, 20 + 0x9F, 20 + 0xA4, 20 + 0x96, 4]
    );
    // Control tokens in text are text (SentencePiece semantics): < b o s >.
    assert_eq!(
        enc("<bos>"),
        [
            2,
            20 + b'<' as u32,
            7,
            20 + b'o' as u32,
            20 + b's' as u32,
            20 + b'>' as u32,
            4
        ]
    );
    // Empty prompt: BOS and the start-of-answer token.
    assert_eq!(enc(""), [2, 4]);
    // Python's strip keeps the "_", which becomes a space: "▁".
    assert_eq!(enc(" \n_ "), [2, 5, 4]);
    // Merges written as "a b" strings mean the same.
    let t2 = BpeTokenizer::from_json_str(&tiny_json(true), "tiny-strings").unwrap();
    for s in ["abc", "c ab", "bca", "é a b c", "aaa bbb ccc abcabc"] {
        assert_eq!(t2.encode_prompt(s, 48).unwrap(), enc(s), "{s:?}");
    }
}

#[test]
fn long_prompts_are_cut_to_max_len_with_a_warning() {
    let _ = captured();
    let t = tiny();
    // "a▁a▁a…" (60 a's): a, then 59 × "▁a" → 1 + 1 + 59 + 1 = 62 ids before the cut.
    let prompt = vec!["a"; 60].join(" ");
    let before = warnings_containing("62 tokens, more than max_len 48");
    let ids = t.encode_prompt(&prompt, 48).unwrap();
    assert_eq!(ids.len(), 48);
    assert_eq!(ids[..2], [2, 6]);
    assert!(ids[2..].iter().all(|&i| i == 11), "{ids:?}");
    assert_eq!(
        warnings_containing("62 tokens, more than max_len 48"),
        before + 1
    );
    // Exactly max_len: no cut, no warning.
    let prompt = vec!["a"; 46].join(" ");
    let ids = t.encode_prompt(&prompt, 48).unwrap();
    assert_eq!(ids.len(), 48);
    assert_eq!(*ids.last().unwrap(), 4);
    assert_eq!(warnings_containing("48 tokens, more than"), 0);
    // max_len 0 is a configuration error.
    let e = t.encode_prompt("a", 0).unwrap_err().to_string();
    assert!(e.contains("max_len must be at least 1"), "{e}");
}

#[test]
fn clean_prompt_is_openpis() {
    assert_eq!(clean_prompt("  pick_up\nthe block  "), "pick up the block");
    // Strip happens before the replacements: a trailing "_" leaves a trailing space.
    assert_eq!(clean_prompt("block_"), "block ");
    assert_eq!(clean_prompt("\n_x_\n"), " x ");
    assert_eq!(clean_prompt("\t\r\n"), "");
}

#[test]
fn byte_fallback_tokenizer_is_deterministic() {
    let _ = captured();
    let t = ByteTokenizer::default();
    assert_eq!(
        t.encode_prompt(" a_b\n", 48).unwrap(),
        [2, 217 + 97, 217 + 32, 217 + 98, 108]
    );
    assert_eq!(t.encode_prompt("", 48).unwrap(), [2, 108]);
    let ids = t.encode_prompt(&"x".repeat(100), 48).unwrap();
    assert_eq!(ids.len(), 48);
    assert!(ids.iter().all(|&i| i < 473));
    // A directory without tokenizer.json gives it, with a warning.
    let dir = tempfile::tempdir().unwrap();
    let before = warnings_containing("byte fallback tokenizer");
    let tok = load_tokenizer(dir.path()).unwrap();
    assert!(tok.describe().contains("random weights"));
    assert_eq!(
        tok.encode_prompt("hi", 48).unwrap(),
        [2, 217 + 104, 217 + 105, 108]
    );
    assert_eq!(warnings_containing("byte fallback tokenizer"), before + 1);
    // A path that does not exist (a mistyped explicit tokenizer path) is an error.
    let missing = dir.path().join("paligemma.json");
    let e = load_tokenizer(&missing).err().unwrap().to_string();
    assert!(
        e.contains("paligemma.json: no such file or directory"),
        "{e}"
    );
}

// ---------------------------------------------------------------------------------------------
// Broken files
// ---------------------------------------------------------------------------------------------

fn load_err(json: &str) -> String {
    match BpeTokenizer::from_json_str(json, "t.json") {
        Ok(_) => panic!("accepted a broken tokenizer: {json}"),
        Err(e) => e.to_string(),
    }
}

fn with(f: impl FnOnce(&mut serde_json::Value)) -> String {
    let mut v: serde_json::Value = serde_json::from_str(&tiny_json(false)).unwrap();
    f(&mut v);
    v.to_string()
}

#[test]
fn broken_tokenizer_files_are_refused_with_a_reason() {
    let cases: Vec<(String, &str)> = vec![
        ("{not json".into(), "t.json: not valid JSON"),
        ("{}".into(), "t.json: no `model` object"),
        (
            with(|v| v["model"]["type"] = "Unigram".into()),
            "model type `Unigram` is not supported",
        ),
        (
            with(|v| v["model"]["vocab"] = 3.into()),
            "no `vocab` object",
        ),
        (
            with(|v| v["model"]["merges"] = serde_json::Value::Null),
            "no `merges` list",
        ),
        (
            with(|v| v["model"]["merges"][0] = serde_json::json!(["a", "zz"])),
            "merge 0 (\"a\", \"zz\") uses pieces missing from the vocab",
        ),
        (
            with(|v| v["model"]["merges"][1] = "bc".into()),
            "merge 1 \"bc\" is not \"a b\"",
        ),
        (
            with(|v| {
                v["model"]["vocab"]
                    .as_object_mut()
                    .unwrap()
                    .remove("<0x41>");
            }),
            "byte_fallback is on but <0x41> is not in the vocab",
        ),
        (
            with(|v| v["normalizer"] = serde_json::json!({"type": "NFKC"})),
            "normalizer `NFKC` is not supported",
        ),
        (
            with(|v| {
                v["normalizer"] = serde_json::json!({"type": "Replace", "pattern": {"Regex": " +"}, "content": "▁"})
            }),
            "Replace normalizer with a Regex pattern is not supported",
        ),
        (
            with(|v| v["pre_tokenizer"] = serde_json::json!({"type": "ByteLevel"})),
            "pre_tokenizer `ByteLevel` is not supported",
        ),
        (
            with(|v| {
                v["model"]["vocab"].as_object_mut().unwrap().remove("<bos>");
                v["added_tokens"].as_array_mut().unwrap().remove(2);
            }),
            "no <bos> (or <s>) token",
        ),
        (
            with(|v| v["model"]["unk_token"] = "<nope>".into()),
            "unk_token \"<nope>\" is not in the vocab",
        ),
        (
            with(|v| v["added_tokens"] = serde_json::json!([{"id": 5}])),
            "added_tokens[0] has no content",
        ),
        (
            with(|v| v["model"]["dropout"] = 0.1.into()),
            "BPE dropout 0.1 is not supported",
        ),
    ];
    for (json, expected) in cases {
        let e = load_err(&json);
        assert!(e.starts_with("tokenizer: t.json: "), "{e}");
        assert!(e.contains(expected), "expected {expected:?} in {e:?}");
    }
    // Through load_tokenizer: a malformed file is an error, not the fallback.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tokenizer.json"), "[1, 2").unwrap();
    let e = load_tokenizer(dir.path()).err().unwrap().to_string();
    assert!(e.contains("tokenizer.json: not valid JSON"), "{e}");
}

#[test]
fn metaspace_and_prepend_tokenizers() {
    // A Llama-style file: Prepend("▁") + Replace, so the first word gets "▁".
    let t = BpeTokenizer::from_json_str(
        &with(|v| {
            v["normalizer"] = serde_json::json!({"type": "Sequence", "normalizers": [
                {"type": "Prepend", "prepend": "▁"},
                {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]})
        }),
        "llama-style",
    )
    .unwrap();
    // "▁ab" = ▁ a b: a+b first (rank 0) → ▁ ab (▁+ab is no merge).
    assert_eq!(t.encode("ab"), [5, 9]);
    assert_eq!(t.encode("ac"), [11, 8]);
    // Metaspace pre-tokenizer with splitting: "a▁ab" → "a", "▁ab"; each word merged alone.
    let t = BpeTokenizer::from_json_str(
        &with(|v| {
            v["normalizer"] = serde_json::Value::Null;
            v["pre_tokenizer"] = serde_json::json!({"type": "Metaspace", "replacement": "▁",
                "prepend_scheme": "never", "split": true});
        }),
        "metaspace",
    )
    .unwrap();
    assert_eq!(t.encode("a ab"), [6, 5, 9]);
    assert_eq!(t.encode("a ac"), [6, 11, 8]);
}

/// Random vocabularies and merges against a plain BPE: repeatedly merge the adjacent pair of
/// lowest rank, leftmost first.
#[test]
fn random_merges_match_a_plain_bpe() {
    use rand::{Rng, SeedableRng};
    use std::collections::HashMap;
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let chars: Vec<String> = ["a", "b", "c", "d", "▁", "é"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for round in 0..5 {
        let mut vocab: Vec<String> = vec!["<pad>", "<eos>", "<bos>", "<unk>", "\n"]
            .into_iter()
            .map(String::from)
            .collect();
        vocab.extend(chars.iter().cloned());
        let mut merges: Vec<(String, String)> = Vec::new();
        while merges.len() < 150 {
            let a = vocab[rng.gen_range(5..vocab.len())].clone();
            let b = vocab[rng.gen_range(5..vocab.len())].clone();
            let ab = format!("{a}{b}");
            if ab.chars().count() > 6 || merges.iter().any(|m| m.0 == a && m.1 == b) {
                continue;
            }
            if !vocab.contains(&ab) {
                vocab.push(ab);
            }
            // Some merged pieces get a second, later-ranked way to be built.
            merges.push((a, b));
        }
        let id: HashMap<&str, u32> = vocab
            .iter()
            .enumerate()
            .map(|(i, p)| (p.as_str(), i as u32))
            .collect();
        let json = serde_json::json!({
            "added_tokens": [{"id": 2, "content": "<bos>", "special": true}],
            "normalizer": {"type": "Replace", "pattern": {"String": " "}, "content": "▁"},
            "model": {"type": "BPE", "vocab": id, "merges": merges.iter().map(|(a, b)| serde_json::json!([a, b])).collect::<Vec<_>>()}
        });
        let tok = BpeTokenizer::from_json_str(&json.to_string(), "random").unwrap();
        let rank: HashMap<(u32, u32), (usize, u32)> = merges
            .iter()
            .enumerate()
            .rev()
            .map(|(r, (a, b))| {
                (
                    (id[a.as_str()], id[b.as_str()]),
                    (r, id[format!("{a}{b}").as_str()]),
                )
            })
            .collect();
        for _ in 0..300 {
            let len = rng.gen_range(0..40);
            let text: String = (0..len)
                .map(|_| ["a", "b", "c", "d", " ", "é"][rng.gen_range(0..6)])
                .collect();
            let mut syms: Vec<u32> = text
                .replace(' ', "▁")
                .chars()
                .map(|c| id[c.to_string().as_str()])
                .collect();
            loop {
                let best = (0..syms.len().saturating_sub(1))
                    .filter_map(|i| {
                        rank.get(&(syms[i], syms[i + 1]))
                            .map(|&(r, new)| (r, i, new))
                    })
                    .min();
                let Some((_, i, new)) = best else { break };
                syms[i] = new;
                syms.remove(i + 1);
            }
            assert_eq!(tok.encode(&text), syms, "round {round}, text {text:?}");
        }
    }
}

//! Prompt tokenization, as openpi's `PaligemmaTokenizer(max_len=48)` does it for π0:
//!
//! ```text
//! cleaned = prompt.strip().replace("_", " ").replace("\n", " ")
//! tokens  = sp.encode(cleaned, add_bos=True) + sp.encode("\n")   # "\n" = start of answer
//! tokens  = tokens[:max_len]                                      # with a warning if cut
//! ```
//!
//! openpi runs the SentencePiece model `paligemma_tokenizer.model`; we read the same vocabulary
//! from a Hugging Face `tokenizer.json` (the file `google/paligemma-3b-pt-224` and `lerobot/pi0`
//! ship), which describes it as a BPE model with `byte_fallback`, merges ordered by piece score
//! and the normalizer `Replace(" ", "▁")` (Gemma has no dummy prefix). [`BpeTokenizer`] is a
//! small, dependency-free implementation of exactly the parts of that format such files use.
//! It follows SentencePiece where the two differ: control tokens (`<bos>`, `<eos>`, `<pad>`,
//! `<unk>`, `<mask>`, `<s>`, `</s>`) written in a prompt are ordinary text, never the control
//! id (SentencePiece never matches control symbols in text, the `tokenizers` library does), so a
//! prompt cannot inject them. Every other added token (user-defined pieces such as `"\n"`,
//! `<loc0000>`, `<start_of_turn>`) is matched in the text, longest first, as both do.
//!
//! Padding is not produced: engines take the exact prompt length (identical outputs, as the
//! padded tokens are masked in openpi).
//!
//! Without a `tokenizer.json`, [`load_tokenizer`] falls back to [`ByteTokenizer`], a
//! deterministic stand-in for demos with random weights only (it is logged loudly).

use std::collections::{BinaryHeap, HashMap};
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{Error, Result};

/// openpi's prompt length for π0 (`Pi0Config.max_token_len`).
pub const DEFAULT_MAX_LEN: usize = 48;

/// Turns a task prompt into model token ids: BOS, the prompt, then the "\n" start-of-answer
/// token, cut to `max_len` (never padded).
pub trait PromptTokenizer: Send + Sync {
    fn encode_prompt(&self, text: &str, max_len: usize) -> Result<Vec<u32>>;
    /// One line for logs: what this tokenizer is and where it came from.
    fn describe(&self) -> String;
}

/// openpi's text cleaning: `prompt.strip().replace("_", " ").replace("\n", " ")`. Python's
/// `str.strip()` also strips U+001C..U+001F, which Rust's `trim` keeps, so they are added.
pub fn clean_prompt(text: &str) -> String {
    text.trim_matches(is_python_space).replace(['_', '\n'], " ")
}

fn is_python_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// openpi's truncation: keep the first `max_len` ids and warn (the "\n" token is lost then,
/// exactly as in openpi).
fn truncate(mut ids: Vec<u32>, max_len: usize) -> Result<Vec<u32>> {
    if max_len == 0 {
        return Err(Error::Tokenizer("max_len must be at least 1".into()));
    }
    if ids.len() > max_len {
        log::warn!(
            "prompt is {} tokens, more than max_len {max_len}: truncated to the first {max_len} \
             (as openpi does); shorten the prompt",
            ids.len()
        );
        ids.truncate(max_len);
    }
    Ok(ids)
}

// ---------------------------------------------------------------------------------------------
// tokenizer.json (BPE)
// ---------------------------------------------------------------------------------------------

/// Control pieces that SentencePiece never matches in text (see the module doc).
const CONTROL_TOKENS: [&str; 7] = ["<bos>", "<eos>", "<pad>", "<unk>", "<mask>", "<s>", "</s>"];

#[derive(Clone, Debug)]
enum NormStep {
    Replace { pattern: String, content: String },
    Prepend(String),
    Lowercase,
    Strip { left: bool, right: bool },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SplitBehavior {
    Removed,
    Isolated,
    MergedWithPrevious,
    MergedWithNext,
    Contiguous,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Prepend {
    Always,
    First,
    Never,
}

#[derive(Clone, Debug)]
enum PreStep {
    Metaspace {
        replacement: char,
        prepend: Prepend,
        split: bool,
    },
    Split {
        pattern: String,
        behavior: SplitBehavior,
    },
}

/// Added tokens matched in text, grouped by first character, longest first.
#[derive(Clone, Debug, Default)]
struct AddedMatcher {
    by_first: HashMap<char, Vec<(String, u32)>>,
}

impl AddedMatcher {
    fn insert(&mut self, content: &str, id: u32) {
        if let Some(c) = content.chars().next() {
            self.by_first
                .entry(c)
                .or_default()
                .push((content.to_string(), id));
        }
    }

    /// Longest first within each bucket (call once all tokens are in).
    fn finish(&mut self) {
        for v in self.by_first.values_mut() {
            v.sort_by_key(|t| std::cmp::Reverse(t.0.len()));
        }
    }

    fn is_empty(&self) -> bool {
        self.by_first.is_empty()
    }

    /// Leftmost-longest split of `text` into runs of plain text and matched tokens.
    fn split<'a>(&self, text: &'a str) -> Vec<Segment<'a>> {
        let mut out = Vec::new();
        if self.is_empty() {
            if !text.is_empty() {
                out.push(Segment::Text(text));
            }
            return out;
        }
        let mut start = 0;
        let mut i = 0;
        while i < text.len() {
            let c = text[i..].chars().next().expect("i is a char boundary");
            let hit = self.by_first.get(&c).and_then(|cands| {
                cands
                    .iter()
                    .find(|(s, _)| text[i..].starts_with(s.as_str()))
            });
            if let Some((s, id)) = hit {
                if start < i {
                    out.push(Segment::Text(&text[start..i]));
                }
                out.push(Segment::Token(*id));
                i += s.len();
                start = i;
            } else {
                i += c.len_utf8();
            }
        }
        if start < text.len() {
            out.push(Segment::Text(&text[start..]));
        }
        out
    }
}

enum Segment<'a> {
    Text(&'a str),
    Token(u32),
}

/// A BPE tokenizer read from a Hugging Face `tokenizer.json` (the PaliGemma/Gemma layout:
/// BPE model with merges and byte fallback, `Replace`/`Prepend` normalizers, optional
/// `Metaspace`/`Split` pre-tokenizers). Anything else in the file is refused with a reason,
/// rather than silently tokenized differently.
#[derive(Clone, Debug)]
pub struct BpeTokenizer {
    source: String,
    vocab: HashMap<String, u32>,
    /// (left id, right id) → (rank, merged id).
    merges: HashMap<(u32, u32), (u32, u32)>,
    byte_ids: Option<Box<[u32; 256]>>,
    unk: Option<u32>,
    fuse_unk: bool,
    continuing_subword_prefix: Option<String>,
    end_of_word_suffix: Option<String>,
    ignore_merges: bool,
    raw_added: AddedMatcher,
    normalized_added: AddedMatcher,
    normalizer: Vec<NormStep>,
    pre_tokenizer: Vec<PreStep>,
    bos: u32,
    newline: Option<u32>,
    max_id: u32,
}

fn tok_err(source: &str, msg: impl std::fmt::Display) -> Error {
    Error::Tokenizer(format!("{source}: {msg}"))
}

impl BpeTokenizer {
    /// Reads `path` (a `tokenizer.json`).
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_json_str(&text, &path.display().to_string())
    }

    /// Parses the contents of a `tokenizer.json`; `source` names it in errors and logs.
    pub fn from_json_str(json: &str, source: &str) -> Result<Self> {
        let mut root: Value = serde_json::from_str(json)
            .map_err(|e| tok_err(source, format!("not valid JSON: {e}")))?;
        // The vocabulary is moved out (no copy of its 257k strings).
        let vocab_val = root.pointer_mut("/model/vocab").map(Value::take);
        let model = root
            .get("model")
            .filter(|m| m.is_object())
            .ok_or_else(|| tok_err(source, "no `model` object"))?;
        match model.get("type").and_then(Value::as_str) {
            Some("BPE") => {}
            None if model.get("merges").is_some() => {}
            Some(t) => {
                return Err(tok_err(
                    source,
                    format!("model type `{t}` is not supported (only BPE, as PaliGemma uses)"),
                ))
            }
            None => return Err(tok_err(source, "model has no `type`")),
        }
        if let Some(d) = model.get("dropout").and_then(Value::as_f64) {
            if d > 0.0 {
                return Err(tok_err(source, format!("BPE dropout {d} is not supported")));
            }
        }

        // Vocabulary: model.vocab plus added tokens (which may lie outside it).
        let vocab_obj = match vocab_val {
            Some(Value::Object(m)) => m,
            _ => return Err(tok_err(source, "model has no `vocab` object")),
        };
        let mut vocab = HashMap::with_capacity(vocab_obj.len());
        for (piece, id) in vocab_obj {
            let id = id
                .as_u64()
                .filter(|&i| i <= u32::MAX as u64)
                .ok_or_else(|| tok_err(source, format!("vocab entry {piece:?} has id {id}")))?;
            vocab.insert(piece, id as u32);
        }
        let mut raw_added = AddedMatcher::default();
        let mut normalized_added = AddedMatcher::default();
        let mut added_ids: HashMap<String, u32> = HashMap::new();
        if let Some(added) = root.get("added_tokens") {
            let added = added
                .as_array()
                .ok_or_else(|| tok_err(source, "`added_tokens` is not a list"))?;
            for (i, t) in added.iter().enumerate() {
                let content = t
                    .get("content")
                    .and_then(Value::as_str)
                    .ok_or_else(|| tok_err(source, format!("added_tokens[{i}] has no content")))?;
                let id = t
                    .get("id")
                    .and_then(Value::as_u64)
                    .filter(|&i| i <= u32::MAX as u64)
                    .ok_or_else(|| tok_err(source, format!("added_tokens[{i}] has no valid id")))?
                    as u32;
                added_ids.insert(content.to_string(), id);
                if content.is_empty() || CONTROL_TOKENS.contains(&content) {
                    continue;
                }
                // `normalized` defaults to true in `tokenizers` for non-special tokens.
                let special = t.get("special").and_then(Value::as_bool).unwrap_or(false);
                let normalized = t
                    .get("normalized")
                    .and_then(Value::as_bool)
                    .unwrap_or(!special);
                if normalized {
                    normalized_added.insert(content, id);
                } else {
                    raw_added.insert(content, id);
                }
            }
        }
        raw_added.finish();
        normalized_added.finish();
        let lookup = |s: &str| vocab.get(s).or_else(|| added_ids.get(s)).copied();

        // Merges: "a b" strings (older files) or ["a", "b"] pairs (newer files).
        let merges_val = model
            .get("merges")
            .and_then(Value::as_array)
            .ok_or_else(|| tok_err(source, "model has no `merges` list"))?;
        let prefix = model
            .get("continuing_subword_prefix")
            .and_then(Value::as_str)
            .map(str::to_string);
        let mut merges = HashMap::with_capacity(merges_val.len());
        let mut joined = String::new();
        for (rank, m) in merges_val.iter().enumerate() {
            let (a, b) = match m {
                Value::String(s) => s
                    .split_once(' ')
                    .ok_or_else(|| tok_err(source, format!("merge {rank} {s:?} is not \"a b\"")))?,
                Value::Array(p) if p.len() == 2 => match (p[0].as_str(), p[1].as_str()) {
                    (Some(a), Some(b)) => (a, b),
                    _ => return Err(tok_err(source, format!("merge {rank} is not two strings"))),
                },
                _ => return Err(tok_err(source, format!("merge {rank} is malformed: {m}"))),
            };
            let ia = vocab.get(a).copied();
            let ib = vocab.get(b).copied();
            // `tokenizers` drops the continuing-subword prefix of `b` in the merged piece.
            let b_tail = match &prefix {
                Some(p) => b.strip_prefix(p.as_str()).unwrap_or(b),
                None => b,
            };
            joined.clear();
            joined.push_str(a);
            joined.push_str(b_tail);
            let iab = vocab.get(joined.as_str()).copied();
            match (ia, ib, iab) {
                (Some(ia), Some(ib), Some(iab)) => {
                    // The first (lowest-rank) occurrence of a pair wins, as in `tokenizers`.
                    merges.entry((ia, ib)).or_insert((rank as u32, iab));
                }
                _ => {
                    return Err(tok_err(
                        source,
                        format!("merge {rank} ({a:?}, {b:?}) uses pieces missing from the vocab"),
                    ))
                }
            }
        }

        let byte_fallback = model
            .get("byte_fallback")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let byte_ids = if byte_fallback {
            let mut ids = Box::new([0u32; 256]);
            for (b, slot) in ids.iter_mut().enumerate() {
                let piece = format!("<0x{b:02X}>");
                *slot = vocab.get(&piece).copied().ok_or_else(|| {
                    tok_err(
                        source,
                        format!("byte_fallback is on but {piece} is not in the vocab"),
                    )
                })?;
            }
            Some(ids)
        } else {
            None
        };
        let unk =
            match model.get("unk_token").and_then(Value::as_str) {
                Some(u) => Some(lookup(u).ok_or_else(|| {
                    tok_err(source, format!("unk_token {u:?} is not in the vocab"))
                })?),
                None => None,
            };
        let opt_str = |k: &str| model.get(k).and_then(Value::as_str).map(str::to_string);

        let normalizer = match root.get("normalizer") {
            None | Some(Value::Null) => Vec::new(),
            Some(n) => {
                let mut steps = Vec::new();
                parse_normalizer(n, source, &mut steps)?;
                steps
            }
        };
        let pre_tokenizer = match root.get("pre_tokenizer") {
            None | Some(Value::Null) => Vec::new(),
            Some(p) => {
                let mut steps = Vec::new();
                parse_pre_tokenizer(p, source, &mut steps)?;
                steps
            }
        };

        let bos = ["<bos>", "<s>"]
            .iter()
            .find_map(|s| lookup(s))
            .ok_or_else(|| tok_err(source, "no <bos> (or <s>) token"))?;
        let max_id = vocab
            .values()
            .chain(added_ids.values())
            .copied()
            .max()
            .unwrap_or(0);
        let mut tok = BpeTokenizer {
            source: source.to_string(),
            vocab,
            merges,
            byte_ids,
            unk,
            fuse_unk: model
                .get("fuse_unk")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            continuing_subword_prefix: opt_str("continuing_subword_prefix"),
            end_of_word_suffix: opt_str("end_of_word_suffix"),
            ignore_merges: model
                .get("ignore_merges")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            raw_added,
            normalized_added,
            normalizer,
            pre_tokenizer,
            bos,
            newline: None,
            max_id,
        };
        let nl = tok.encode("\n");
        if nl.is_empty() {
            return Err(tok_err(source, "\"\\n\" encodes to nothing"));
        }
        tok.newline = (nl.len() == 1).then(|| nl[0]);
        Ok(tok)
    }

    /// The BOS id (`<bos>`, or `<s>`).
    pub fn bos_id(&self) -> u32 {
        self.bos
    }

    /// Largest id the tokenizer can produce + 1 (compare with the model's vocabulary).
    pub fn id_space(&self) -> usize {
        self.max_id as usize + 1
    }

    /// The id of a vocabulary piece, if any.
    pub fn piece_id(&self, piece: &str) -> Option<u32> {
        self.vocab.get(piece).copied()
    }

    /// SentencePiece `encode(text)` (no BOS/EOS): added-token split, normalization,
    /// pre-tokenization, BPE with byte fallback.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut ids = Vec::new();
        let mut first = true;
        for seg in self.raw_added.split(text) {
            match seg {
                Segment::Token(id) => ids.push(id),
                Segment::Text(t) => {
                    let normalized = self.normalize(t);
                    for seg in self.normalized_added.split(&normalized) {
                        match seg {
                            Segment::Token(id) => ids.push(id),
                            Segment::Text(t) => {
                                for word in self.pre_tokenize(t, first) {
                                    self.bpe_word(&word, &mut ids);
                                }
                            }
                        }
                        first = false;
                    }
                }
            }
            first = false;
        }
        ids
    }

    fn normalize(&self, text: &str) -> String {
        let mut s = text.to_string();
        for step in &self.normalizer {
            s = match step {
                NormStep::Replace { pattern, content } => s.replace(pattern.as_str(), content),
                NormStep::Prepend(p) if !s.is_empty() => format!("{p}{s}"),
                NormStep::Prepend(_) => s,
                NormStep::Lowercase => s.to_lowercase(),
                NormStep::Strip { left, right } => {
                    let mut t = s.as_str();
                    if *left {
                        t = t.trim_start();
                    }
                    if *right {
                        t = t.trim_end();
                    }
                    t.to_string()
                }
            };
        }
        s
    }

    fn pre_tokenize(&self, text: &str, first: bool) -> Vec<String> {
        let mut pieces = vec![text.to_string()];
        for step in &self.pre_tokenizer {
            let mut next = Vec::new();
            for (i, p) in pieces.iter().enumerate() {
                match step {
                    PreStep::Metaspace {
                        replacement,
                        prepend,
                        split,
                    } => {
                        let mut s = p.replace(' ', &replacement.to_string());
                        let add = match prepend {
                            Prepend::Always => true,
                            Prepend::First => first && i == 0,
                            Prepend::Never => false,
                        };
                        if add && !s.starts_with(*replacement) {
                            s.insert(0, *replacement);
                        }
                        if *split {
                            let r = replacement.to_string();
                            next.extend(split_str(&s, &r, SplitBehavior::MergedWithNext));
                        } else {
                            next.push(s);
                        }
                    }
                    PreStep::Split { pattern, behavior } => {
                        next.extend(split_str(p, pattern, *behavior))
                    }
                }
            }
            pieces = next;
        }
        pieces.retain(|p| !p.is_empty());
        pieces
    }

    /// `tokenizers`' `BPE::merge_word` + `Word::merge_all`: characters (byte fallback or unk
    /// for unknown ones), then repeatedly merge the adjacent pair of lowest rank (leftmost on
    /// ties).
    fn bpe_word(&self, word: &str, out: &mut Vec<u32>) {
        if self.ignore_merges {
            if let Some(&id) = self.vocab.get(word) {
                out.push(id);
                return;
            }
        }
        let mut syms: Vec<u32> = Vec::with_capacity(word.len());
        let mut pending_unk = false;
        let n_chars = word.chars().count();
        for (ci, (i, c)) in word.char_indices().enumerate() {
            let ch = &word[i..i + c.len_utf8()];
            let mut piece = std::borrow::Cow::Borrowed(ch);
            if ci > 0 {
                if let Some(p) = &self.continuing_subword_prefix {
                    piece = format!("{p}{piece}").into();
                }
            }
            if ci + 1 == n_chars {
                if let Some(s) = &self.end_of_word_suffix {
                    piece = format!("{piece}{s}").into();
                }
            }
            if let Some(&id) = self.vocab.get(piece.as_ref()) {
                if pending_unk {
                    syms.push(self.unk.expect("pending unk implies an unk id"));
                    pending_unk = false;
                }
                syms.push(id);
                continue;
            }
            if let Some(bytes) = &self.byte_ids {
                if pending_unk {
                    syms.push(self.unk.expect("pending unk implies an unk id"));
                    pending_unk = false;
                }
                syms.extend(piece.bytes().map(|b| bytes[b as usize]));
                continue;
            }
            match self.unk {
                Some(unk) => {
                    if pending_unk && !self.fuse_unk {
                        syms.push(unk);
                    }
                    pending_unk = true;
                }
                None => log::warn!(
                    "tokenizer {}: character {c:?} is not in the vocabulary and there is no \
                     byte fallback or unk token; dropped",
                    self.source
                ),
            }
        }
        if pending_unk {
            syms.push(self.unk.expect("pending unk implies an unk id"));
        }
        self.merge_all(&mut syms);
        out.extend(syms);
    }

    fn merge_all(&self, syms: &mut Vec<u32>) {
        if syms.len() < 2 || self.merges.is_empty() {
            return;
        }
        // Doubly linked list over `syms`; `alive[i]` false once merged into its left neighbour.
        let n = syms.len();
        let mut prev: Vec<isize> = (0..n as isize).map(|i| i - 1).collect();
        let mut next: Vec<usize> = (1..=n).collect();
        let mut alive = vec![true; n];
        // Min-heap on (rank, position).
        let mut heap: BinaryHeap<std::cmp::Reverse<(u32, usize, u32)>> = BinaryHeap::new();
        for i in 0..n - 1 {
            if let Some(&(rank, new_id)) = self.merges.get(&(syms[i], syms[i + 1])) {
                heap.push(std::cmp::Reverse((rank, i, new_id)));
            }
        }
        while let Some(std::cmp::Reverse((_, pos, new_id))) = heap.pop() {
            if !alive[pos] || next[pos] >= n {
                continue;
            }
            let right = next[pos];
            // Stale entry: the pair at `pos` changed since it was queued.
            match self.merges.get(&(syms[pos], syms[right])) {
                Some(&(_, id)) if id == new_id => {}
                _ => continue,
            }
            syms[pos] = new_id;
            alive[right] = false;
            next[pos] = next[right];
            if next[right] < n {
                prev[next[right]] = pos as isize;
            }
            if prev[pos] >= 0 {
                let p = prev[pos] as usize;
                if let Some(&(rank, id)) = self.merges.get(&(syms[p], syms[pos])) {
                    heap.push(std::cmp::Reverse((rank, p, id)));
                }
            }
            if next[pos] < n {
                if let Some(&(rank, id)) = self.merges.get(&(syms[pos], syms[next[pos]])) {
                    heap.push(std::cmp::Reverse((rank, pos, id)));
                }
            }
        }
        let mut k = 0;
        for i in 0..n {
            if alive[i] {
                syms[k] = syms[i];
                k += 1;
            }
        }
        syms.truncate(k);
    }
}

fn split_str(s: &str, pat: &str, behavior: SplitBehavior) -> Vec<String> {
    if pat.is_empty() {
        return vec![s.to_string()];
    }
    // (start, end, is_delimiter) runs.
    let mut runs: Vec<(usize, usize, bool)> = Vec::new();
    let mut last = 0;
    for (i, m) in s.match_indices(pat) {
        if last < i {
            runs.push((last, i, false));
        }
        runs.push((i, i + m.len(), true));
        last = i + m.len();
    }
    if last < s.len() {
        runs.push((last, s.len(), false));
    }
    let mut out: Vec<String> = Vec::new();
    match behavior {
        SplitBehavior::Removed => out.extend(
            runs.iter()
                .filter(|r| !r.2)
                .map(|r| s[r.0..r.1].to_string()),
        ),
        SplitBehavior::Isolated => out.extend(runs.iter().map(|r| s[r.0..r.1].to_string())),
        SplitBehavior::Contiguous => {
            let mut cur: Option<(usize, usize, bool)> = None;
            for r in runs {
                cur = match cur {
                    Some(c) if c.2 && r.2 => Some((c.0, r.1, true)),
                    Some(c) => {
                        out.push(s[c.0..c.1].to_string());
                        Some(r)
                    }
                    None => Some(r),
                };
            }
            if let Some(c) = cur {
                out.push(s[c.0..c.1].to_string());
            }
        }
        SplitBehavior::MergedWithPrevious => {
            let mut start = 0;
            for r in runs.iter().filter(|r| r.2) {
                out.push(s[start..r.1].to_string());
                start = r.1;
            }
            if start < s.len() {
                out.push(s[start..].to_string());
            }
        }
        SplitBehavior::MergedWithNext => {
            let mut start = 0;
            for r in runs.iter().filter(|r| r.2) {
                if start < r.0 {
                    out.push(s[start..r.0].to_string());
                }
                start = r.0;
            }
            if start < s.len() {
                out.push(s[start..].to_string());
            }
        }
    }
    out.retain(|p| !p.is_empty());
    out
}

fn string_pattern(v: &Value, source: &str, what: &str) -> Result<String> {
    match v.get("pattern") {
        Some(p) => {
            if let Some(s) = p.get("String").and_then(Value::as_str) {
                Ok(s.to_string())
            } else if p.get("Regex").is_some() {
                Err(tok_err(
                    source,
                    format!("{what} with a Regex pattern is not supported"),
                ))
            } else if let Some(s) = p.as_str() {
                Ok(s.to_string())
            } else {
                Err(tok_err(
                    source,
                    format!("{what} has a malformed pattern: {p}"),
                ))
            }
        }
        None => Err(tok_err(source, format!("{what} has no pattern"))),
    }
}

fn parse_normalizer(n: &Value, source: &str, out: &mut Vec<NormStep>) -> Result<()> {
    let ty = n
        .get("type")
        .and_then(Value::as_str)
        .ok_or_else(|| tok_err(source, format!("normalizer without a type: {n}")))?;
    match ty {
        "Sequence" => {
            let list = n
                .get("normalizers")
                .and_then(Value::as_array)
                .ok_or_else(|| tok_err(source, "Sequence normalizer has no `normalizers` list"))?;
            for m in list {
                parse_normalizer(m, source, out)?;
            }
        }
        "Replace" => {
            let pattern = string_pattern(n, source, "Replace normalizer")?;
            let content = n
                .get("content")
                .and_then(Value::as_str)
                .ok_or_else(|| tok_err(source, "Replace normalizer has no content"))?
                .to_string();
            out.push(NormStep::Replace { pattern, content });
        }
        "Prepend" => {
            let p = n
                .get("prepend")
                .and_then(Value::as_str)
                .ok_or_else(|| tok_err(source, "Prepend normalizer has no `prepend`"))?;
            out.push(NormStep::Prepend(p.to_string()));
        }
        "Lowercase" => out.push(NormStep::Lowercase),
        "Strip" => out.push(NormStep::Strip {
            left: n.get("strip_left").and_then(Value::as_bool).unwrap_or(true),
            right: n
                .get("strip_right")
                .and_then(Value::as_bool)
                .unwrap_or(true),
        }),
        other => {
            return Err(tok_err(
                source,
                format!(
                    "normalizer `{other}` is not supported (supported: Sequence, Replace, \
                     Prepend, Lowercase, Strip)"
                ),
            ))
        }
    }
    Ok(())
}

fn parse_pre_tokenizer(p: &Value, source: &str, out: &mut Vec<PreStep>) -> Result<()> {
    let ty = p
        .get("type")
        .and_then(Value::as_str)
        .ok_or_else(|| tok_err(source, format!("pre_tokenizer without a type: {p}")))?;
    match ty {
        "Sequence" => {
            let list = p
                .get("pretokenizers")
                .and_then(Value::as_array)
                .ok_or_else(|| tok_err(source, "Sequence pre_tokenizer has no `pretokenizers`"))?;
            for q in list {
                parse_pre_tokenizer(q, source, out)?;
            }
        }
        "Metaspace" => {
            let replacement = p
                .get("replacement")
                .and_then(Value::as_str)
                .and_then(|s| {
                    let mut c = s.chars();
                    c.next().filter(|_| c.next().is_none())
                })
                .unwrap_or('▁');
            let prepend = match p.get("prepend_scheme").and_then(Value::as_str) {
                Some("always") => Prepend::Always,
                Some("first") => Prepend::First,
                Some("never") => Prepend::Never,
                Some(o) => return Err(tok_err(source, format!("unknown prepend_scheme `{o}`"))),
                None => match p.get("add_prefix_space").and_then(Value::as_bool) {
                    Some(false) => Prepend::Never,
                    _ => Prepend::Always,
                },
            };
            let split = p.get("split").and_then(Value::as_bool).unwrap_or(true);
            out.push(PreStep::Metaspace {
                replacement,
                prepend,
                split,
            });
        }
        "Split" => {
            if p.get("invert").and_then(Value::as_bool).unwrap_or(false) {
                return Err(tok_err(
                    source,
                    "Split pre_tokenizer with invert is not supported",
                ));
            }
            let pattern = string_pattern(p, source, "Split pre_tokenizer")?;
            let behavior = match p.get("behavior").and_then(Value::as_str) {
                Some("Removed") => SplitBehavior::Removed,
                Some("Isolated") => SplitBehavior::Isolated,
                Some("MergedWithPrevious") => SplitBehavior::MergedWithPrevious,
                Some("MergedWithNext") => SplitBehavior::MergedWithNext,
                Some("Contiguous") => SplitBehavior::Contiguous,
                o => return Err(tok_err(source, format!("unknown Split behavior {o:?}"))),
            };
            out.push(PreStep::Split { pattern, behavior });
        }
        other => {
            return Err(tok_err(
                source,
                format!(
                    "pre_tokenizer `{other}` is not supported (supported: none, Sequence, \
                     Metaspace, Split with a string pattern)"
                ),
            ))
        }
    }
    Ok(())
}

impl PromptTokenizer for BpeTokenizer {
    fn encode_prompt(&self, text: &str, max_len: usize) -> Result<Vec<u32>> {
        let cleaned = clean_prompt(text);
        let mut ids = Vec::with_capacity(max_len + 2);
        ids.push(self.bos);
        ids.extend(self.encode(&cleaned));
        match self.newline {
            Some(nl) => ids.push(nl),
            None => ids.extend(self.encode("\n")),
        }
        truncate(ids, max_len)
    }

    fn describe(&self) -> String {
        format!(
            "BPE tokenizer {} ({} pieces, {} merges)",
            self.source,
            self.vocab.len(),
            self.merges.len()
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Fallback for demos without a tokenizer.json
// ---------------------------------------------------------------------------------------------

/// A deterministic stand-in used only when no `tokenizer.json` exists (demos with random
/// weights): `[BOS, OFFSET + byte for each UTF-8 byte of the cleaned prompt, NEWLINE]`, cut to
/// `max_len`. Its ids mean nothing to a trained model.
#[derive(Clone, Debug)]
pub struct ByteTokenizer {
    pub bos: u32,
    pub newline: u32,
    pub offset: u32,
}

impl ByteTokenizer {
    /// Gemma's `<bos>` id.
    pub const BOS: u32 = 2;
    /// Gemma's "\n" id (the start-of-answer token).
    pub const NEWLINE: u32 = 108;
    /// Byte b maps to `OFFSET + b` (ids 217..=472: a fixed range clear of the special ids).
    pub const OFFSET: u32 = 217;
}

impl Default for ByteTokenizer {
    fn default() -> Self {
        ByteTokenizer {
            bos: Self::BOS,
            newline: Self::NEWLINE,
            offset: Self::OFFSET,
        }
    }
}

impl PromptTokenizer for ByteTokenizer {
    fn encode_prompt(&self, text: &str, max_len: usize) -> Result<Vec<u32>> {
        let cleaned = clean_prompt(text);
        let mut ids = Vec::with_capacity(cleaned.len() + 2);
        ids.push(self.bos);
        ids.extend(cleaned.bytes().map(|b| self.offset + b as u32));
        ids.push(self.newline);
        truncate(ids, max_len)
    }

    fn describe(&self) -> String {
        "byte fallback tokenizer (no tokenizer.json: for demos with random weights only)".into()
    }
}

// ---------------------------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------------------------

/// Where the tokenizer of a checkpoint lives: `path` itself if it is a `.json` file, else
/// `tokenizer.json` in the checkpoint directory (or beside a `.safetensors` file).
pub fn tokenizer_path(checkpoint: &Path) -> PathBuf {
    if checkpoint.is_file() {
        if checkpoint.extension().is_some_and(|e| e == "json")
            && !checkpoint.to_string_lossy().ends_with(".index.json")
        {
            return checkpoint.to_path_buf();
        }
        return checkpoint
            .parent()
            .map(|p| p.join("tokenizer.json"))
            .unwrap_or_else(|| PathBuf::from("tokenizer.json"));
    }
    checkpoint.join("tokenizer.json")
}

/// The prompt tokenizer for a checkpoint (see [`tokenizer_path`]). A malformed file, or a
/// `checkpoint` path that does not exist at all (a mistyped explicit tokenizer path), is an
/// error; a checkpoint without `tokenizer.json` gives the [`ByteTokenizer`] with a warning, so
/// that a demo with random weights can run with a prompt.
pub fn load_tokenizer(checkpoint: &Path) -> Result<Box<dyn PromptTokenizer>> {
    if !checkpoint.exists() {
        return Err(Error::Tokenizer(format!(
            "{}: no such file or directory",
            checkpoint.display()
        )));
    }
    let path = tokenizer_path(checkpoint);
    if path.is_file() {
        let tok = BpeTokenizer::from_file(&path)?;
        log::info!("prompt tokenizer: {}", tok.describe());
        return Ok(Box::new(tok));
    }
    log::warn!(
        "no tokenizer at {}: prompts use the byte fallback tokenizer, which only suits random \
         weights; put the PaliGemma tokenizer.json there for a trained checkpoint",
        path.display()
    );
    Ok(Box::new(ByteTokenizer::default()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_behaviors() {
        let s = "a--b-c-";
        let b = |x| split_str(s, "-", x);
        assert_eq!(b(SplitBehavior::Removed), ["a", "b", "c"]);
        assert_eq!(
            b(SplitBehavior::Isolated),
            ["a", "-", "-", "b", "-", "c", "-"]
        );
        assert_eq!(
            b(SplitBehavior::Contiguous),
            ["a", "--", "b", "-", "c", "-"]
        );
        assert_eq!(
            b(SplitBehavior::MergedWithPrevious),
            ["a-", "-", "b-", "c-"]
        );
        assert_eq!(
            b(SplitBehavior::MergedWithNext),
            ["a", "-", "-b", "-c", "-"]
        );
    }

    #[test]
    fn python_strip() {
        assert_eq!(clean_prompt("\u{1f} a_b\nc \u{a0}"), "a b c");
    }
}

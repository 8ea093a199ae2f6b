//! Checkpoint loading end to end through the CPU engine: the pi0-tiny golden weights re-written
//! in other layouts / dtypes / shardings give bitwise the same actions, and broken checkpoints
//! give errors that say what is wrong (never a panic).

mod common;

use std::path::Path;
use std::sync::OnceLock;

use common::tiny_dir;

use half::bf16;
use pi0_mps::cpu::CpuEngine;
use pi0_mps::model::checkpoint::{self, Dtype};
use pi0_mps::model::generate::{rewrite_checkpoint, Layout, WriteOptions};
use pi0_mps::model::keys;
use pi0_mps::{ModelInput, PolicyEngine};

/// A safetensors file as header JSON + data section, for building broken variants.
struct RawSafetensors {
    header: serde_json::Map<String, serde_json::Value>,
    data: Vec<u8>,
}

/// One tensor of a file being written.
struct RawTensor {
    name: String,
    dtype: String,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl RawSafetensors {
    fn read(path: &Path) -> Self {
        let bytes = std::fs::read(path).unwrap();
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
        RawSafetensors {
            header: header.as_object().unwrap().clone(),
            data: bytes[8 + n..].to_vec(),
        }
    }

    fn metadata(&self) -> Option<serde_json::Value> {
        self.header.get("__metadata__").cloned()
    }

    /// Tensors in data order.
    fn tensors(&self) -> Vec<RawTensor> {
        let mut out: Vec<(usize, RawTensor)> = self
            .header
            .iter()
            .filter(|(k, _)| *k != "__metadata__")
            .map(|(name, info)| {
                let off = info["data_offsets"].as_array().unwrap();
                let (s, e) = (
                    off[0].as_u64().unwrap() as usize,
                    off[1].as_u64().unwrap() as usize,
                );
                let t = RawTensor {
                    name: name.clone(),
                    dtype: info["dtype"].as_str().unwrap().to_string(),
                    shape: info["shape"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|d| d.as_u64().unwrap() as usize)
                        .collect(),
                    bytes: self.data[s..e].to_vec(),
                };
                (s, t)
            })
            .collect();
        out.sort_by_key(|(s, _)| *s);
        out.into_iter().map(|(_, t)| t).collect()
    }
}

fn write_safetensors(path: &Path, tensors: &[RawTensor], metadata: Option<serde_json::Value>) {
    let mut header = serde_json::Map::new();
    let mut offset = 0;
    for t in tensors {
        header.insert(
            t.name.clone(),
            serde_json::json!({"dtype": t.dtype, "shape": t.shape,
                "data_offsets": [offset, offset + t.bytes.len()]}),
        );
        offset += t.bytes.len();
    }
    if let Some(m) = metadata {
        header.insert("__metadata__".into(), m);
    }
    let mut h = serde_json::to_vec(&header).unwrap();
    while h.len() % 8 != 0 {
        h.push(b' ');
    }
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend(h);
    for t in tensors {
        out.extend(&t.bytes);
    }
    std::fs::write(path, out).unwrap();
}

/// A temp checkpoint dir with pi0-tiny's config files and `tensors` as weights.safetensors.
fn variant(tensors: &[RawTensor], metadata: Option<serde_json::Value>) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for f in ["dims.json", "config.json"] {
        std::fs::copy(tiny_dir().join(f), dir.path().join(f)).unwrap();
    }
    write_safetensors(&dir.path().join("weights.safetensors"), tensors, metadata);
    dir
}

fn original() -> RawSafetensors {
    RawSafetensors::read(&tiny_dir().join("weights.safetensors"))
}

/// The golden input restricted to view 0 (cheaper; every weight is still used).
fn input_and_noise() -> (ModelInput, Vec<f32>) {
    let bytes = std::fs::read(tiny_dir().join("golden.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let f32s = |n: &str| -> Vec<f32> {
        st.tensor(n)
            .unwrap()
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    };
    let tokens: Vec<u32> = st
        .tensor("tokens")
        .unwrap()
        .data()
        .chunks_exact(4)
        .map(|c| i32::from_le_bytes(c.try_into().unwrap()) as u32)
        .zip(st.tensor("token_mask").unwrap().data())
        .filter(|(_, &m)| m != 0)
        .map(|(t, _)| t)
        .collect();
    let images = f32s("images");
    let px = images.len() / 3;
    let input = ModelInput {
        images: vec![Some(images[..px].to_vec())],
        tokens,
        state: f32s("state"),
    };
    (input, f32s("noise"))
}

fn actions_of(dir: &Path) -> Vec<f32> {
    let (input, noise) = input_and_noise();
    let mut engine = CpuEngine::load(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let a = engine.sample_actions(&input, &noise).unwrap();
    assert!(a.iter().all(|v| v.is_finite()));
    a
}

/// Actions of the checked-in golden checkpoint (computed once per test binary).
fn reference_actions() -> &'static [f32] {
    static REF: OnceLock<Vec<f32>> = OnceLock::new();
    REF.get_or_init(|| actions_of(&tiny_dir()))
}

fn load_err(dir: &Path) -> String {
    let e = checkpoint::load(dir).expect_err("a broken checkpoint must not load");
    let msg = e.to_string();
    // The engine's own entry point reports the same.
    let e2 = CpuEngine::load(dir)
        .err()
        .expect("engine must refuse it too");
    assert_eq!(e2.to_string(), msg);
    println!("error: {msg}");
    msg
}

#[test]
fn golden_checkpoint_layouts_dtypes_and_shards_give_identical_actions() {
    let src = checkpoint::load(&tiny_dir()).unwrap();
    let cases = [
        (Layout::LeRobot, Dtype::BF16, 1),
        (Layout::Openpi, Dtype::F32, 1),
        (Layout::Openpi, Dtype::BF16, 3),
        (Layout::LeRobot, Dtype::F32, 2),
    ];
    for (layout, dtype, shards) in cases {
        let dir = tempfile::tempdir().unwrap();
        rewrite_checkpoint(
            &src.checkpoint,
            &src.config,
            dir.path(),
            WriteOptions {
                layout,
                dtype,
                shards,
            },
        )
        .unwrap();
        let files: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|f| f.ends_with(".safetensors"))
            .collect();
        assert_eq!(files.len(), shards, "{files:?}");
        if shards > 1 {
            assert!(dir.path().join("model.safetensors.index.json").is_file());
        }
        if layout == Layout::LeRobot {
            let first = files.iter().min().unwrap();
            let raw = RawSafetensors::read(&dir.path().join(first));
            assert!(
                raw.header
                    .keys()
                    .all(|k| k == "__metadata__" || k.starts_with("model.")),
                "LeRobot keys carry the model. prefix"
            );
        }
        let loaded = checkpoint::load(dir.path()).unwrap();
        assert_eq!(loaded.config, src.config);
        let actions = actions_of(dir.path());
        assert!(
            actions == reference_actions(),
            "{layout:?} {dtype:?} {shards} shard(s): actions differ"
        );
        println!("{layout:?} {dtype:?} {shards} shard(s): identical actions");
    }
}

#[test]
fn golden_checkpoint_mixed_f32_bf16_and_unused_expert_lm_head() {
    let raw = original();
    let mut tensors = raw.tensors();
    // Every other tensor re-stored as F32 (the values are bf16-exact, so nothing changes).
    for t in tensors.iter_mut().step_by(2) {
        assert_eq!(t.dtype, "BF16");
        t.bytes = t
            .bytes
            .chunks_exact(2)
            .flat_map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32().to_le_bytes())
            .collect();
        t.dtype = "F32".into();
    }
    // The unused expert LM head that openpi's converter also writes.
    let (vocab, width) = (16_384, 64);
    tensors.push(RawTensor {
        name: "paligemma_with_expert.gemma_expert.lm_head.weight".into(),
        dtype: "BF16".into(),
        shape: vec![vocab, width],
        bytes: vec![0x3f; vocab * width * 2],
    });
    let dir = variant(&tensors, raw.metadata());
    assert!(actions_of(dir.path()) == reference_actions());
}

#[test]
fn golden_checkpoint_missing_tensor_is_named_with_its_shape() {
    let raw = original();
    let missing = keys::expert_layer(2, "mlp.up_proj.weight");
    let tensors: Vec<RawTensor> = raw
        .tensors()
        .into_iter()
        .filter(|t| t.name != missing)
        .collect();
    let dir = variant(&tensors, raw.metadata());
    let msg = load_err(dir.path());
    assert!(msg.contains("missing tensor"), "{msg}");
    assert!(msg.contains(&missing), "{msg}");
    assert!(msg.contains("[128, 64]"), "{msg}");

    // Without the embedding (neither embed_tokens nor the tied lm_head) the error names both.
    let tensors: Vec<RawTensor> = raw
        .tensors()
        .into_iter()
        .filter(|t| t.name != keys::LM_HEAD)
        .collect();
    let dir = variant(&tensors, raw.metadata());
    let msg = load_err(dir.path());
    assert!(
        msg.contains("embed_tokens") && msg.contains("lm_head"),
        "{msg}"
    );
}

#[test]
fn golden_checkpoint_misshaped_tensor_names_expected_and_found() {
    let raw = original();
    // Same byte count, transposed shape.
    let mut tensors = raw.tensors();
    let t = tensors
        .iter_mut()
        .find(|t| t.name == "state_proj.weight")
        .unwrap();
    assert_eq!(t.shape, vec![64, 32]);
    t.shape = vec![32, 64];
    let dir = variant(&tensors, raw.metadata());
    let msg = load_err(dir.path());
    assert!(msg.contains("state_proj.weight"), "{msg}");
    assert!(msg.contains("shape [32, 64], expected [64, 32]"), "{msg}");

    // A shape whose size disagrees with the stored bytes.
    let mut tensors = raw.tensors();
    let name = keys::llm_layer(1, "mlp.down_proj.weight");
    let t = tensors.iter_mut().find(|t| t.name == name).unwrap();
    t.shape = vec![64, 129];
    let dir = variant(&tensors, raw.metadata());
    let msg = load_err(dir.path());
    assert!(msg.contains(&name), "{msg}");
    assert!(msg.contains("[64, 129]") && msg.contains("bytes"), "{msg}");
}

#[test]
fn golden_checkpoint_unsupported_dtype_is_reported() {
    let raw = original();
    let mut tensors = raw.tensors();
    let t = tensors
        .iter_mut()
        .find(|t| t.name == "action_out_proj.bias")
        .unwrap();
    t.dtype = "F64".into();
    t.bytes = vec![0; 32 * 8];
    let dir = variant(&tensors, raw.metadata());
    let msg = load_err(dir.path());
    assert!(
        msg.contains("action_out_proj.bias") && msg.contains("F64"),
        "{msg}"
    );
}

#[test]
fn golden_checkpoint_truncated_and_corrupt_files_are_errors() {
    let bytes = std::fs::read(tiny_dir().join("weights.safetensors")).unwrap();
    let with_file = |content: &[u8]| {
        let dir = tempfile::tempdir().unwrap();
        for f in ["dims.json", "config.json"] {
            std::fs::copy(tiny_dir().join(f), dir.path().join(f)).unwrap();
        }
        std::fs::write(dir.path().join("weights.safetensors"), content).unwrap();
        dir
    };

    // Cut inside the data section.
    let dir = with_file(&bytes[..bytes.len() / 2]);
    let msg = load_err(dir.path());
    assert!(msg.contains("truncated"), "{msg}");
    assert!(msg.contains("weights.safetensors"), "{msg}");

    // Cut inside the header.
    let dir = with_file(&bytes[..100]);
    let msg = load_err(dir.path());
    assert!(msg.contains("truncated or not safetensors"), "{msg}");

    // Shorter than the length prefix.
    let dir = with_file(&bytes[..5]);
    let msg = load_err(dir.path());
    assert!(msg.contains("5 bytes"), "{msg}");

    // A header that is not JSON.
    let mut junk = 24u64.to_le_bytes().to_vec();
    junk.extend(b"this is not a header !!!");
    let dir = with_file(&junk);
    let msg = load_err(dir.path());
    assert!(msg.contains("header is not valid JSON"), "{msg}");

    // Random bytes: an absurd header length.
    let noise: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let dir = with_file(&noise);
    let msg = load_err(dir.path());
    assert!(msg.contains("not safetensors"), "{msg}");

    // JSON but not an object, and offsets outside the data.
    let mut arr = 8u64.to_le_bytes().to_vec();
    arr.extend(b"[1,2,3] ");
    let dir = with_file(&arr);
    let msg = load_err(dir.path());
    assert!(msg.contains("not a JSON object"), "{msg}");
    let h = br#"{"state_proj.bias":{"dtype":"BF16","shape":[64],"data_offsets":[0,128]}}"#;
    let mut bad = (h.len() as u64).to_le_bytes().to_vec();
    bad.extend(h);
    bad.extend([0u8; 10]);
    let dir = with_file(&bad);
    let msg = load_err(dir.path());
    assert!(
        msg.contains("state_proj.bias") && msg.contains("truncated or corrupt"),
        "{msg}"
    );
}

#[test]
fn golden_checkpoint_missing_paths_are_errors() {
    let msg = load_err(Path::new("/nonexistent/pi0/checkpoint"));
    assert!(msg.contains("/nonexistent/pi0/checkpoint"), "{msg}");
    assert!(msg.contains("no such file or directory"), "{msg}");

    let empty = tempfile::tempdir().unwrap();
    let msg = load_err(empty.path());
    assert!(msg.contains("none of model.safetensors"), "{msg}");

    // A sharded checkpoint with one shard deleted.
    let src = checkpoint::load(&tiny_dir()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    rewrite_checkpoint(
        &src.checkpoint,
        &src.config,
        dir.path(),
        WriteOptions {
            layout: Layout::Openpi,
            dtype: Dtype::BF16,
            shards: 3,
        },
    )
    .unwrap();
    std::fs::remove_file(dir.path().join("model-00002-of-00003.safetensors")).unwrap();
    let msg = load_err(dir.path());
    assert!(msg.contains("model-00002-of-00003.safetensors"), "{msg}");
}

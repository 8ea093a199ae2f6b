//! A full-size random π0 checkpoint (3.24 B parameters, 6.5 GB in bf16) can be written and
//! loaded, and loading reports the parameter count. Skips with a message when the disk lacks
//! room or PI0_SKIP_FULL_SIZE is set.

use std::path::Path;
use std::time::Instant;

use pi0_mps::model::checkpoint;
use pi0_mps::model::config::ModelConfig;
use pi0_mps::model::generate::{write_random_checkpoint, WriteOptions};
use pi0_mps::model::keys;

fn free_bytes(dir: &Path) -> Option<u64> {
    let out = std::process::Command::new("df")
        .args(["-Pk"])
        .arg(dir)
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().nth(1)?;
    let avail_kb: u64 = line.split_whitespace().nth(3)?.parse().ok()?;
    Some(avail_kb * 1024)
}

#[test]
fn full_size_random_checkpoint_generates_and_loads_with_3_24b_parameters() {
    if std::env::var_os("PI0_SKIP_FULL_SIZE").is_some() {
        println!("skipping: PI0_SKIP_FULL_SIZE is set");
        return;
    }
    let base = std::env::var_os("PI0_FULL_SIZE_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let need = 8u64 << 30;
    match free_bytes(&base) {
        Some(free) if free >= need => {}
        Some(free) => {
            println!(
                "skipping: {} has {:.1} GB free, the full-size checkpoint needs 8 GB",
                base.display(),
                free as f64 / 1e9
            );
            return;
        }
        None => {
            println!("skipping: could not read free space of {}", base.display());
            return;
        }
    }
    let dir = tempfile::tempdir_in(&base).unwrap();
    let cfg = ModelConfig::pi0();
    let t = Instant::now();
    let written = write_random_checkpoint(&cfg, dir.path(), 1, WriteOptions::default()).unwrap();
    let gen_s = t.elapsed().as_secs_f64();

    let t = Instant::now();
    let loaded = checkpoint::load(dir.path()).unwrap();
    let load_s = t.elapsed().as_secs_f64();
    let count = loaded.checkpoint.parameter_count(&loaded.config);
    println!(
        "full-size checkpoint: {:.4} B parameters, generated in {gen_s:.1} s, loaded+validated in {load_s:.2} s",
        count as f64 / 1e9
    );
    assert_eq!(loaded.config, cfg);
    assert_eq!(count, written);
    assert!((3.235e9..3.245e9).contains(&(count as f64)), "{count}");
    // A slice of real data is random, not zeros.
    let norm = loaded
        .checkpoint
        .tensor_f32(&format!("{}.norm.weight", keys::EXPERT), &[1024])
        .unwrap();
    let spread = norm.iter().map(|x| x * x).sum::<f32>() / norm.len() as f32;
    assert!(spread > 0.005 && spread.is_finite(), "{spread}");
}

//! `pi0-ckpt`: checkpoint tools. `generate` writes a seeded random π0 (full size or tiny) for
//! demos and benchmarks without the real weights; `info` loads a checkpoint, checks every
//! tensor and reports its dimensions and parameter count; `convert` re-writes one in another
//! layout, dtype or sharding.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand, ValueEnum};
use pi0_mps::model::checkpoint::{self, Dtype};
use pi0_mps::model::config::ModelConfig;
use pi0_mps::model::generate::{self, Layout, WriteOptions};

#[derive(Parser)]
#[command(name = "pi0-ckpt", about = "π0 checkpoint tools")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum Size {
    /// Full π0: SigLIP So400m/14, Gemma-2B, Gemma-300M expert (3.24 B parameters, 6.5 GB bf16).
    Full,
    /// The golden pi0-tiny dimensions (22 M parameters with a 16384-token vocabulary).
    Tiny,
}

#[derive(Clone, Copy, ValueEnum)]
enum DtypeArg {
    Bf16,
    F16,
    F32,
}

#[derive(Clone, Copy, ValueEnum)]
enum LayoutArg {
    Openpi,
    Lerobot,
}

#[derive(Subcommand)]
enum Command {
    /// Write a seeded random checkpoint (openpi PyTorch layout by default).
    Generate {
        #[arg(long, value_enum, default_value = "full")]
        size: Size,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long, value_enum, default_value = "bf16")]
        dtype: DtypeArg,
        #[arg(long, value_enum, default_value = "openpi")]
        layout: LayoutArg,
        #[arg(long, default_value_t = 1)]
        shards: usize,
    },
    /// Load a checkpoint, validate every tensor, print its dimensions and parameter count.
    Info { path: PathBuf },
    /// Re-write a checkpoint in another layout / dtype / sharding.
    Convert {
        path: PathBuf,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, value_enum, default_value = "bf16")]
        dtype: DtypeArg,
        #[arg(long, value_enum, default_value = "openpi")]
        layout: LayoutArg,
        #[arg(long, default_value_t = 1)]
        shards: usize,
    },
}

fn options(dtype: DtypeArg, layout: LayoutArg, shards: usize) -> WriteOptions {
    WriteOptions {
        dtype: match dtype {
            DtypeArg::Bf16 => Dtype::BF16,
            DtypeArg::F16 => Dtype::F16,
            DtypeArg::F32 => Dtype::F32,
        },
        layout: match layout {
            LayoutArg::Openpi => Layout::Openpi,
            LayoutArg::Lerobot => Layout::LeRobot,
        },
        shards,
    }
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pi0-ckpt: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> pi0_mps::Result<()> {
    match cli.command {
        Command::Generate {
            size,
            out,
            seed,
            dtype,
            layout,
            shards,
        } => {
            let cfg = match size {
                Size::Full => ModelConfig::pi0(),
                Size::Tiny => ModelConfig::tiny(),
            };
            let t = Instant::now();
            let n = generate::write_random_checkpoint(
                &cfg,
                &out,
                seed,
                options(dtype, layout, shards),
            )?;
            println!(
                "wrote {} ({:.3} B parameters, seed {seed}) in {:.1} s",
                out.display(),
                n as f64 / 1e9,
                t.elapsed().as_secs_f64()
            );
        }
        Command::Info { path } => {
            let t = Instant::now();
            let loaded = checkpoint::load(&path)?;
            let cfg = &loaded.config;
            let n = loaded.checkpoint.parameter_count(cfg);
            let emb = (cfg.vocab_size * cfg.llm.width) as u64;
            println!("checkpoint  {}", path.display());
            println!(
                "vision      width {} depth {} mlp {} heads {}x{}",
                cfg.vision.width,
                cfg.vision.depth,
                cfg.vision.mlp_dim,
                cfg.vision.num_heads,
                cfg.vision.head_dim
            );
            for (name, g) in [("llm", &cfg.llm), ("expert", &cfg.expert)] {
                println!(
                    "{name:<11} width {} depth {} mlp {} heads {}/{}x{}",
                    g.width, g.depth, g.mlp_dim, g.num_heads, g.num_kv_heads, g.head_dim
                );
            }
            println!(
                "vocabulary  {} rows; action_dim {}; horizon {}",
                cfg.vocab_size, cfg.action_dim, cfg.action_horizon
            );
            println!(
                "parameters  {:.3} B ({:.3} B without the token embedding); checked in {:.2} s",
                n as f64 / 1e9,
                (n - emb) as f64 / 1e9,
                t.elapsed().as_secs_f64()
            );
        }
        Command::Convert {
            path,
            out,
            dtype,
            layout,
            shards,
        } => {
            let loaded = checkpoint::load(&path)?;
            generate::rewrite_checkpoint(
                &loaded.checkpoint,
                &loaded.config,
                &out,
                options(dtype, layout, shards),
            )?;
            println!("wrote {}", out.display());
        }
    }
    Ok(())
}

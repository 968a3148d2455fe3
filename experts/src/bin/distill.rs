//! `distill`: distils the `btm_token` fusion of the experts into one model of their layout
//! (initialised from the first expert), writes it in HF layout for `expert`, and prints
//! the held-out likelihood of the student beside the experts and the fusions.
//!
//! ```text
//! distill [--experts models/foundation models/sft-sop] [--router models/routers/btm_token]
//!         [--mixer models/routers/btm_layer] [--out models/distilled] [--steps 800]
//!         [--n_prompts 400] [--reverse_kl 0] [--seed 7] [--lora_rank R] [--batch_size 8]
//!         [--seq_len 96] [--max_answer_tokens 96] [--force] [--json]
//! ```

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use candle_core::{DType, Device};
use clap::Parser;
use experts::distill::{DistillOptions, distill};
use experts::fusion::{LayerMixer, TokenRouter};
use experts::loader::load_model;
use experts::router_train::heldout_nll;

#[derive(Debug, Parser)]
#[command(version, about, rename_all = "snake_case")]
struct Args {
    /// The teacher's experts; the first one is the student's starting point.
    #[arg(long, num_args = 2.., default_values = ["models/foundation", "models/sft-sop"])]
    experts: Vec<PathBuf>,
    /// The trained btm_token router (train_router).
    #[arg(long, default_value = "models/routers/btm_token")]
    router: PathBuf,
    /// btm_layer coefficients, for the held-out comparison table.
    #[arg(long, default_value = "models/routers/btm_layer")]
    mixer: PathBuf,
    #[arg(long, default_value = "models/distilled")]
    out: PathBuf,
    #[arg(long, default_value_t = 800)]
    steps: usize,
    #[arg(long, default_value_t = 400)]
    n_prompts: usize,
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    /// Weight of reverse KL(student ‖ teacher) in the loss, in [0, 1].
    #[arg(long, default_value_t = 0.0)]
    reverse_kl: f64,
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Train a LoRA adapter of this rank over the first expert instead of all its weights
    /// (`--out` is then an adapter directory).
    #[arg(long)]
    lora_rank: Option<usize>,
    /// Windows per step.
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    /// Tokens per window.
    #[arg(long, default_value_t = 96)]
    seq_len: usize,
    /// Longest teacher answer, in tokens.
    #[arg(long, default_value_t = 96)]
    max_answer_tokens: usize,
    /// Rebuild even when `out` already holds this distillation.
    #[arg(long)]
    force: bool,
    #[arg(long)]
    json: bool,
}

fn main() {
    if let Err(e) = run(&Args::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(args: &Args) -> Result<()> {
    if !(0.0..=1.0).contains(&args.reverse_kl) {
        bail!("--reverse_kl must be in [0, 1], got {}", args.reverse_kl);
    }
    let mut loaded = Vec::new();
    let mut names = Vec::new();
    for dir in &args.experts {
        let mut m = load_model(dir, DType::F32, &Device::Cpu)
            .with_context(|| format!("expert {}", dir.display()))?;
        m.name = dir.file_name().map_or_else(
            || dir.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        names.push(m.name.clone());
        loaded.push(m);
    }
    let experts: Vec<_> = loaded.iter().collect();
    let router = TokenRouter::load(&args.router, &Device::Cpu)
        .with_context(|| format!("router {}", args.router.display()))?;
    let opts = DistillOptions {
        steps: args.steps,
        n_prompts: args.n_prompts,
        lr: args.lr,
        reverse_kl: args.reverse_kl,
        seed: args.seed,
        lora_rank: args.lora_rank,
        batch_size: args.batch_size,
        seq_len: args.seq_len,
        max_answer_tokens: args.max_answer_tokens,
    };
    let record = distill(&experts, &router, &opts, &args.out, args.force)?;
    eprintln!(
        "distilled into {}: teacher transcripts {} tokens in {:.1} s, KL {:.4} -> {:.4} in {:.1} s",
        args.out.display(),
        record.transcript_tokens,
        record.teacher_seconds,
        record.losses.first().copied().unwrap_or(f32::NAN),
        record.losses.last().copied().unwrap_or(f32::NAN),
        record.train_seconds
    );
    let student = load_model(&args.out, DType::F32, &Device::Cpu)
        .with_context(|| format!("reloading {}", args.out.display()))?;
    let mixer = LayerMixer::load(&args.mixer, &Device::Cpu)
        .with_context(|| format!("mixer {}", args.mixer.display()))?;
    let table = heldout_nll(
        &experts,
        &names,
        &router,
        &mixer,
        &[("distilled", &student)],
        args.seed + 99,
        40,
    )?;
    let cols: Vec<&str> = names
        .iter()
        .map(String::as_str)
        .chain(["ensemble", "btm_token", "btm_layer", "distilled"])
        .collect();
    println!("held-out NLL per token (lower is better):");
    println!("| domain | {} |", cols.join(" | "));
    println!("|---|{}", "---|".repeat(cols.len()));
    for domain in ["reasoning", "sop", "mixed"] {
        let cells: Vec<String> = cols
            .iter()
            .map(|k| format!("{:.3}", table[domain][*k].as_f64().unwrap_or(f64::NAN)))
            .collect();
        println!("| {domain} | {} |", cells.join(" | "));
    }
    if args.json {
        println!(
            "{}",
            serde_json::json!({"record": record, "heldout_nll": table})
        );
    }
    Ok(())
}

//! `finetune`: trains a LoRA adapter of a pretrained model on SOP answers
//! (`experts::lora::train`), e.g. the `sft-sop` branch of SmolLM2-135M-Instruct:
//!
//! ```sh
//! ./target/release/expert pull smollm2
//! ./target/release/finetune --base models/smollm2-135m-instruct --out adapters/sft-sop-smollm2
//! ```

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;
use experts::lora::{TARGETS, TrainOptions, train};

/// Fine-tune a LoRA adapter (PEFT layout) of a model directory on SOP procedures.
#[derive(Debug, Parser)]
#[command(version, about, rename_all = "snake_case")]
struct Args {
    /// The base model directory (HF layout, e.g. from `expert pull smollm2`).
    #[arg(long, default_value = "models/smollm2-135m-instruct")]
    base: PathBuf,
    /// The adapter directory to write (adapter_config.json, adapter_model.safetensors,
    /// train_report.json, train_log.jsonl).
    #[arg(long, default_value = "adapters/sft-sop-smollm2")]
    out: PathBuf,
    #[arg(long, default_value_t = 8)]
    rank: usize,
    #[arg(long, default_value_t = 16.0)]
    alpha: f64,
    /// Projections to adapt, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = TARGETS.map(String::from))]
    targets: Vec<String>,
    #[arg(long, default_value_t = 100)]
    steps: usize,
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// SOP training examples (English) drawn from the corpus.
    #[arg(long, default_value_t = 2000)]
    examples: usize,
    /// Examples are cut to this many tokens.
    #[arg(long, default_value_t = 160)]
    max_len: usize,
    /// Print the training report as one JSON object on the last line of stdout.
    #[arg(long)]
    json: bool,
}

fn main() {
    let args = Args::parse();
    if let Err(e) = run(&args) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(args: &Args) -> Result<()> {
    let (out, base_ref) = experts::lora::adapter_location(&args.base, &args.out)
        .with_context(|| format!("base model {}", args.base.display()))?;
    let opts = TrainOptions {
        rank: args.rank,
        alpha: args.alpha,
        targets: args.targets.clone(),
        steps: args.steps,
        batch_size: args.batch_size,
        lr: args.lr,
        seed: args.seed,
        examples: args.examples,
        max_len: args.max_len,
        base_ref,
    };
    let report = train(&args.base, &out, &opts)?;
    println!(
        "{}: {} parameters, {} steps, {} examples, {} answer tokens, {:.1} s, loss {:.3} -> {:.3}",
        args.out.display(),
        report.parameters,
        opts.steps,
        report.examples,
        report.answer_tokens_seen,
        report.seconds,
        report.first_loss,
        report.final_loss
    );
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    }
    Ok(())
}

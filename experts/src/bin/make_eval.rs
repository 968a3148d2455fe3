//! `make_eval`: writes the eval file of `hybrid_inference --eval_file` for the forged models.
//!
//! Items come from the corpus's held-out generators ([`experts::corpus::reasoning_eval`],
//! [`experts::corpus::sop_eval`]), whose split is decided by content: no train set of any
//! seed contains them. The seed here (7) also differs from the forge's (42), so the file is
//! not the forge's own `models/eval/` either. As a cheap second check, the prompts are
//! compared against the train sets the forge draws (seed `--forge_seed`, both profiles'
//! sizes) and the command fails on any overlap.

use std::collections::HashSet;
use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Parser;
use experts::corpus::{self, Example};
use experts::forge::ForgeProfile;

/// Write a JSON-lines eval file `{"prompt","reference","label"}` (0 = reasoning, 1 = sop)
/// of held-out items for the forged model pair.
#[derive(Debug, Parser)]
#[command(version, about, rename_all = "snake_case")]
struct Args {
    /// Output file.
    #[arg(long, default_value = "data/eval/eval.jsonl")]
    out: PathBuf,
    /// Items per category (reasoning, sop), interleaved in the file.
    #[arg(long, default_value_t = 16)]
    n: usize,
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// The forge's seed, whose train sets the items are checked against.
    #[arg(long, default_value_t = 42)]
    forge_seed: u64,
}

fn main() {
    let args = Args::parse();
    if let Err(e) = run(&args) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(args: &Args) -> Result<()> {
    if args.n == 0 {
        bail!("--n must be at least 1");
    }
    let reasoning = corpus::reasoning_eval(args.seed, args.n);
    let sop = corpus::sop_eval(args.seed, args.n);
    if reasoning.len() < args.n || sop.len() < args.n {
        bail!(
            "the corpus gave only {} reasoning and {} sop items for --n {}",
            reasoning.len(),
            sop.len(),
            args.n
        );
    }

    let mut trained: HashSet<String> = HashSet::new();
    for profile in [ForgeProfile::small(), ForgeProfile::full()] {
        trained.extend(
            corpus::reasoning_train(args.forge_seed, profile.n_reasoning)
                .into_iter()
                .map(|e| e.prompt),
        );
        trained.extend(
            corpus::sop_train(args.forge_seed, profile.n_sop)
                .into_iter()
                .map(|e| e.prompt),
        );
    }
    let overlap: Vec<&Example> = reasoning
        .iter()
        .chain(&sop)
        .filter(|e| trained.contains(&e.prompt))
        .collect();
    if let Some(first) = overlap.first() {
        bail!(
            "{} eval prompts also occur in the forge's train sets, e.g. {:?}",
            overlap.len(),
            first.prompt
        );
    }

    let mut text = String::new();
    for (r, s) in reasoning.iter().zip(&sop) {
        for (ex, label) in [(r, 0), (s, 1)] {
            let line =
                serde_json::json!({"prompt": ex.prompt, "reference": ex.answer, "label": label});
            text.push_str(&line.to_string());
            text.push('\n');
        }
    }
    if let Some(dir) = args.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut file = std::fs::File::create(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", args.out.display()))?;
    eprintln!(
        "wrote {} items ({} reasoning, {} sop; none in the forge's train sets of {} prompts) to {}",
        2 * args.n,
        args.n,
        args.n,
        trained.len(),
        args.out.display()
    );
    Ok(())
}

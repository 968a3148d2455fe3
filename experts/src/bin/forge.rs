//! `forge`: builds the foundation / sft-sop model pair (see `experts::forge`), and with
//! `--multi_expert` three more SFT experts, one per SOP area (`experts::forge::forge_areas`).

use std::path::PathBuf;

use anyhow::Result;
use clap::Parser;
use experts::forge::{ForgeOptions, ForgeProfile, forge, forge_areas};

/// Build a small foundation model and its SOP branch by real training, in HF format.
#[derive(Debug, Parser)]
#[command(version, about, rename_all = "snake_case")]
struct Args {
    /// Output directory: writes foundation/, sft-sop/ and eval/ inside.
    #[arg(long, default_value = "models")]
    out: PathBuf,
    /// `full` (default, minutes) or `small` (tests, seconds).
    #[arg(long, default_value = "full")]
    profile: String,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Rebuild even when complete models exist.
    #[arg(long)]
    force: bool,
    /// Skip the evaluation table at the end.
    #[arg(long)]
    no_eval: bool,
    /// Also branch sft-customer-service, sft-sales and sft-tech-support from the foundation
    /// and write eval/multi.jsonl and classifier-multi/ (configs/multi_expert.yaml).
    #[arg(long)]
    multi_expert: bool,
    /// Print one JSON object as the last line of stdout.
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
    let profile = ForgeProfile::by_name(&args.profile)?;
    let opts = ForgeOptions {
        out: args.out.clone(),
        profile,
        seed: args.seed,
        force: args.force,
        evaluate: !args.no_eval,
    };
    if args.multi_expert {
        return run_areas(args, &opts);
    }
    let report = forge(&opts)?;
    for (name, r) in [
        ("foundation", &report.foundation_record),
        ("sft-sop", &report.sft_record),
    ] {
        println!(
            "{name}: {} parameters, {} steps, {} tokens, {:.1} s, loss {:.3} -> {:.3}",
            r.parameters, r.steps, r.tokens_seen, r.seconds, r.first_loss, r.final_loss
        );
    }
    if !report.scores.is_empty() {
        println!();
        println!(
            "| model | reasoning accuracy | reasoning NLL/token | SOP token-F1 | SOP exact | SOP NLL/token |"
        );
        println!("|---|---|---|---|---|---|");
        for s in &report.scores {
            println!(
                "| {} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} |",
                s.model, s.reasoning_accuracy, s.reasoning_nll, s.sop_f1, s.sop_exact, s.sop_nll
            );
        }
    }
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    }
    Ok(())
}

fn run_areas(args: &Args, opts: &ForgeOptions) -> Result<()> {
    let report = forge_areas(opts)?;
    for (name, _, r) in &report.experts {
        println!(
            "{name}: {} parameters, {} steps, {} tokens, {:.1} s, loss {:.3} -> {:.3}",
            r.parameters, r.steps, r.tokens_seen, r.seconds, r.first_loss, r.final_loss
        );
    }
    println!("eval set: {}", report.eval_file.display());
    println!("classifier data: {}", report.classifier_dir.display());
    if let Some((_, first)) = report.scores.first() {
        println!();
        let header: Vec<String> = first
            .iter()
            .map(|c| format!("{} quality / NLL", c.category))
            .collect();
        println!("| model | {} |", header.join(" | "));
        println!("|---|{}", "---|".repeat(header.len()));
        for (model, row) in &report.scores {
            let cells: Vec<String> = row
                .iter()
                .map(|c| format!("{:.3} / {:.2}", c.quality, c.nll))
                .collect();
            println!("| {model} | {} |", cells.join(" | "));
        }
    }
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    }
    Ok(())
}

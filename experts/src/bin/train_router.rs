//! `train_router`: trains the BTM token-level router, the layer-level coefficients and the
//! `defer` head over frozen experts (see `experts::router_train`).

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use candle_core::{DType, Device};
use clap::Parser;
use experts::fusion::{LayerMixer, TokenRouter};
use experts::loader::load_model;
use experts::router_train::{
    DeferTrainOptions, RouterTrainOptions, heldout_nll, train_deferral_head, train_layer_mixer,
    train_token_router,
};

/// What `train_router` trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
#[value(rename_all = "snake_case")]
enum Kind {
    /// The BTM token-level router (`<out>/btm_token`).
    BtmToken,
    /// The BTM layer-level coefficients (`<out>/btm_layer`).
    BtmLayer,
    /// The `defer` head of the first two experts (`<out>/defer`).
    Defer,
}

/// Train the Branch-Train-Merge routers of two or more experts.
#[derive(Debug, Parser)]
#[command(version, about, rename_all = "snake_case")]
struct Args {
    /// Expert model directories (their directory names become the expert names).
    #[arg(long, num_args = 2.., default_values = ["models/foundation", "models/sft-sop"])]
    experts: Vec<PathBuf>,
    /// Output: writes btm_token/, btm_layer/ and defer/ inside (those of --kind).
    #[arg(long, default_value = "models/routers")]
    out: PathBuf,
    /// What to train (comma-separated).
    #[arg(long, value_delimiter = ',', default_values = ["btm_token", "btm_layer", "defer"])]
    kind: Vec<Kind>,
    /// Steps of the defer head (full-batch, on every answer position).
    #[arg(long, default_value_t = 300)]
    defer_steps: usize,
    /// General questions the first expert answers itself for the defer head's data.
    #[arg(long, default_value_t = 120)]
    defer_general: usize,
    /// Reasoning + SOP documents (half each) for the defer head's data.
    #[arg(long, default_value_t = 400)]
    defer_docs: usize,
    /// Steps of the token router.
    #[arg(long, default_value_t = 200)]
    steps: usize,
    /// Steps of the layer coefficients.
    #[arg(long, default_value_t = 60)]
    layer_steps: usize,
    #[arg(long, default_value_t = 1234)]
    seed: u64,
    /// Also train a router and coefficients for every pair of the experts, into
    /// `<out>/pairs/<a>+<b>/` (for `gateway.fusion_top_k: 2` with three or more experts;
    /// the expert process picks the one trained for a request's experts). Pairs already
    /// trained are kept.
    #[arg(long)]
    pairs: bool,
    /// Print one JSON object as the last line of stdout.
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
    if args.experts.len() < 2 {
        bail!("give at least two experts");
    }
    let mut loaded = Vec::new();
    let mut names = Vec::new();
    for dir in &args.experts {
        loaded.push(
            load_model(dir, DType::F32, &Device::Cpu)
                .with_context(|| format!("expert {}", dir.display()))?,
        );
        names.push(dir.file_name().map_or_else(
            || dir.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        ));
    }
    let models: Vec<_> = loaded.iter().collect();
    let mut summary = serde_json::Map::new();
    if args.kind.contains(&Kind::Defer) {
        let opts = DeferTrainOptions {
            steps: args.defer_steps,
            seed: args.seed,
            n_docs: args.defer_docs,
            n_general: args.defer_general,
            ..DeferTrainOptions::default()
        };
        let record =
            train_deferral_head(&models[..2], &names[..2], &opts, &args.out.join("defer"))?;
        let held_out = format!("held out {}", record.summary);
        report("defer", &record.losses, record.seconds, &held_out);
        summary.insert("defer".into(), serde_json::to_value(&record)?);
    }
    let opts = RouterTrainOptions {
        steps: args.steps,
        layer_steps: args.layer_steps,
        seed: args.seed,
        ..RouterTrainOptions::default()
    };
    if args.kind.contains(&Kind::BtmToken) {
        let token = train_token_router(&models, &names, &opts, &args.out.join("btm_token"))?;
        let weights = format!("mean weights {}", token.summary);
        report("btm_token", &token.losses, token.seconds, &weights);
        summary.insert("btm_token".into(), serde_json::to_value(&token)?);
    }
    if args.kind.contains(&Kind::BtmLayer) {
        let layer = train_layer_mixer(&models, &names, &opts, &args.out.join("btm_layer"))?;
        report(
            "btm_layer",
            &layer.losses,
            layer.seconds,
            &layer.summary.to_string(),
        );
        summary.insert("btm_layer".into(), serde_json::to_value(&layer)?);
    }
    // Mixture likelihood on held-out text (another seed's eval documents), once a router
    // and coefficients of these experts are both in `out` (one may be from an earlier run).
    let trained_btm = args.kind.contains(&Kind::BtmToken) || args.kind.contains(&Kind::BtmLayer);
    let router = TokenRouter::load(&args.out.join("btm_token"), &Device::Cpu).ok();
    let mixer = LayerMixer::load(&args.out.join("btm_layer"), &Device::Cpu).ok();
    if let (true, Some(router), Some(mixer)) = (trained_btm, router, mixer)
        && router.config.experts == names
        && mixer.experts == names
    {
        let heldout = heldout_nll(&models, &names, &router, &mixer, &[], args.seed + 99, 40)?;
        print_heldout(&names, &heldout);
        std::fs::write(
            args.out.join("heldout.json"),
            serde_json::to_string_pretty(&heldout)?,
        )
        .with_context(|| format!("writing {}", args.out.join("heldout.json").display()))?;
        summary.insert("heldout_nll".into(), heldout);
    }
    if args.pairs {
        train_pairs(args, &models, &names, &opts)?;
    }
    if args.json {
        println!("{}", serde_json::Value::Object(summary));
    }
    Ok(())
}

/// One line per trained part: its first and last loss, its time and what it measured.
fn report(name: &str, losses: &[f32], seconds: f64, measured: &str) {
    println!(
        "{name}: loss {:.3} -> {:.3} in {seconds:.1} s; {measured}",
        losses.first().copied().unwrap_or(f32::NAN),
        losses.last().copied().unwrap_or(f32::NAN),
    );
}

/// The held-out NLL table (markdown).
fn print_heldout(names: &[String], heldout: &serde_json::Value) {
    println!("\nheld-out NLL per token (lower is better):");
    println!(
        "| domain | {} | ensemble | btm_token | btm_layer |",
        names.join(" | ")
    );
    println!("|---|{}---|---|---|", "---|".repeat(names.len()));
    for domain in ["reasoning", "sop", "mixed"] {
        let row = &heldout[domain];
        let cells: Vec<String> = names
            .iter()
            .map(String::as_str)
            .chain(["ensemble", "btm_token", "btm_layer"])
            .map(|k| format!("{:.3}", row[k].as_f64().unwrap_or(f64::NAN)))
            .collect();
        println!("| {domain} | {} |", cells.join(" | "));
    }
}

/// A router and coefficients for each pair of experts, in the experts' order.
fn train_pairs(
    args: &Args,
    models: &[&experts::loader::LoadedModel],
    names: &[String],
    opts: &RouterTrainOptions,
) -> Result<()> {
    for i in 0..models.len() {
        for j in i + 1..models.len() {
            let pair = [models[i], models[j]];
            let pair_names = vec![names[i].clone(), names[j].clone()];
            let dir = args
                .out
                .join("pairs")
                .join(format!("{}+{}", names[i], names[j]));
            let done = |sub: &str, loaded: Option<Vec<String>>| {
                dir.join(sub).exists() && loaded.as_ref() == Some(&pair_names)
            };
            let router = TokenRouter::load(&dir.join("btm_token"), &Device::Cpu)
                .ok()
                .map(|r| r.config.experts);
            if !done("btm_token", router) {
                let r = train_token_router(&pair, &pair_names, opts, &dir.join("btm_token"))?;
                println!(
                    "{}: btm_token loss {:.3} -> {:.3} in {:.1} s",
                    dir.display(),
                    r.losses.first().copied().unwrap_or(f32::NAN),
                    r.losses.last().copied().unwrap_or(f32::NAN),
                    r.seconds
                );
            }
            let mixer = LayerMixer::load(&dir.join("btm_layer"), &Device::Cpu)
                .ok()
                .map(|m| m.experts);
            if !done("btm_layer", mixer) {
                let l = train_layer_mixer(&pair, &pair_names, opts, &dir.join("btm_layer"))?;
                println!(
                    "{}: btm_layer loss {:.3} -> {:.3} in {:.1} s",
                    dir.display(),
                    l.losses.first().copied().unwrap_or(f32::NAN),
                    l.losses.last().copied().unwrap_or(f32::NAN),
                    l.seconds
                );
            }
        }
    }
    Ok(())
}

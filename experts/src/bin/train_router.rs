//! `train_router`: trains the BTM token-level router and the layer-level coefficients over
//! frozen experts (see `experts::router_train`).

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use candle_core::{DType, Device};
use clap::Parser;
use experts::loader::load_model;
use experts::router_train::{RouterTrainOptions, train_layer_mixer, train_token_router};

/// Train the Branch-Train-Merge routers of two or more experts.
#[derive(Debug, Parser)]
#[command(version, about, rename_all = "snake_case")]
struct Args {
    /// Expert model directories (their directory names become the expert names).
    #[arg(long, num_args = 2.., default_values = ["models/foundation", "models/sft-sop"])]
    experts: Vec<PathBuf>,
    /// Output: writes btm_token/ and btm_layer/ inside.
    #[arg(long, default_value = "models/routers")]
    out: PathBuf,
    /// Steps of the token router.
    #[arg(long, default_value_t = 200)]
    steps: usize,
    /// Steps of the layer coefficients.
    #[arg(long, default_value_t = 60)]
    layer_steps: usize,
    #[arg(long, default_value_t = 1234)]
    seed: u64,
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
    let opts = RouterTrainOptions {
        steps: args.steps,
        layer_steps: args.layer_steps,
        seed: args.seed,
        ..RouterTrainOptions::default()
    };
    let token = train_token_router(&models, &names, &opts, &args.out.join("btm_token"))?;
    println!(
        "btm_token: loss {:.3} -> {:.3} in {:.1} s; mean weights {}",
        token.losses.first().copied().unwrap_or(f32::NAN),
        token.losses.last().copied().unwrap_or(f32::NAN),
        token.seconds,
        token.summary
    );
    let layer = train_layer_mixer(&models, &names, &opts, &args.out.join("btm_layer"))?;
    println!(
        "btm_layer: loss {:.3} -> {:.3} in {:.1} s; {}",
        layer.losses.first().copied().unwrap_or(f32::NAN),
        layer.losses.last().copied().unwrap_or(f32::NAN),
        layer.seconds,
        layer.summary
    );
    if args.json {
        println!(
            "{}",
            serde_json::json!({"btm_token": token, "btm_layer": layer})
        );
    }
    Ok(())
}

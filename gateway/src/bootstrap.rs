//! Getting the default models when they are missing, so that `gateway --config
//! configs/config.yaml` works on a fresh machine: the forged pair (`forge`) and its BTM
//! routers (`train_router`), built by the project's own binaries next to the gateway's
//! executable, with their progress bars on stderr.
//!
//! Only the default layout is built: `experts.models` entries named `foundation` and
//! `sft-sop` under one directory, and routers / mixers under `<that directory>/routers/`.
//! Any other missing path is an error naming it.

use std::path::{Path, PathBuf};

use crate::config::{Bootstrap, GatewayConfig};
use crate::error::{GatewayError, Result};

fn section_paths(doc: &serde_yaml::Value, section: &str) -> Vec<(String, PathBuf)> {
    doc.get("experts")
        .and_then(|e| e.get(section))
        .and_then(|m| m.as_mapping())
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.as_str()?.to_string(), PathBuf::from(v.as_str()?))))
                .collect()
        })
        .unwrap_or_default()
}

fn sibling_binary(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()
        .map_err(|e| GatewayError::io("finding the gateway's executable", e))?;
    let path = exe
        .parent()
        .map(|d| d.join(format!("{name}{}", std::env::consts::EXE_SUFFIX)))
        .ok_or_else(|| GatewayError::Internal("the executable has no directory".into()))?;
    if !path.exists() {
        return Err(GatewayError::Internal(format!(
            "{} is missing: build all binaries (`cargo build --release --bins`)",
            path.display()
        )));
    }
    Ok(path)
}

async fn run(binary: &Path, args: &[&std::ffi::OsStr]) -> Result<()> {
    eprintln!(
        "bootstrap: {} {}",
        binary.display(),
        args.iter()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    );
    let status = tokio::process::Command::new(binary)
        .args(args)
        .stdout(std::process::Stdio::inherit())
        .stderr(std::process::Stdio::inherit())
        .status()
        .await
        .map_err(|e| GatewayError::io(format!("running {}", binary.display()), e))?;
    if !status.success() {
        return Err(GatewayError::Internal(format!(
            "{} failed ({status})",
            binary.display()
        )));
    }
    Ok(())
}

/// Builds whatever default models, routers and mixers the config names but the disk lacks.
pub async fn ensure_models(config: &GatewayConfig) -> Result<()> {
    if config.gateway.expert_processes == 0 {
        return Ok(());
    }
    let text = std::fs::read_to_string(&config.path)
        .map_err(|e| GatewayError::io(config.path.display().to_string(), e))?;
    let doc: serde_yaml::Value = serde_yaml::from_str(&text)
        .map_err(|e| GatewayError::Internal(format!("{}: {e}", config.path.display())))?;
    let models = section_paths(&doc, "models");
    let missing: Vec<&(String, PathBuf)> = models
        .iter()
        .filter(|(_, p)| !p.join("config.json").exists())
        .collect();
    let mut aux = section_paths(&doc, "routers");
    aux.extend(section_paths(&doc, "mixers"));
    let aux_missing = aux.iter().any(|(_, p)| !p.exists());
    if missing.is_empty() && !aux_missing {
        return Ok(());
    }
    let profile = match config.gateway.bootstrap {
        Bootstrap::Off => {
            let what: Vec<String> = missing
                .iter()
                .map(|(_, p)| p.display().to_string())
                .collect();
            return Err(GatewayError::Internal(format!(
                "models are missing ({}) and gateway.bootstrap is off: run `forge` and `train_router`",
                what.join(", ")
            )));
        }
        Bootstrap::Full => "full",
        Bootstrap::Small => "small",
    };
    let find = |name: &str| {
        models
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, p)| p.clone())
    };
    let (Some(foundation), Some(sft)) = (find("foundation"), find("sft-sop")) else {
        return Err(GatewayError::Internal(format!(
            "model directories are missing: {:?}; only the default pair (foundation, sft-sop) can be built here",
            missing.iter().map(|(n, _)| n).collect::<Vec<_>>()
        )));
    };
    let out = foundation
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    if sft.parent() != Some(out.as_path()) {
        return Err(GatewayError::Internal(
            "foundation and sft-sop must share a directory to be forged".into(),
        ));
    }
    if !missing.is_empty() {
        run(
            &sibling_binary("forge")?,
            &[
                "--out".as_ref(),
                out.as_os_str(),
                "--profile".as_ref(),
                profile.as_ref(),
                "--no_eval".as_ref(),
            ],
        )
        .await?;
    }
    if aux.iter().any(|(_, p)| !p.exists()) {
        let routers = out.join("routers");
        run(
            &sibling_binary("train_router")?,
            &[
                "--experts".as_ref(),
                foundation.as_os_str(),
                sft.as_os_str(),
                "--out".as_ref(),
                routers.as_os_str(),
            ],
        )
        .await?;
    }
    if let Some((_, p)) = aux.iter().find(|(_, p)| !p.exists()) {
        return Err(GatewayError::Internal(format!(
            "{} is still missing after bootstrap",
            p.display()
        )));
    }
    Ok(())
}

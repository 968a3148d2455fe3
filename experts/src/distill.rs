//! Distillation of the BTM fusion into one model (1× cost at inference).
//!
//! The teacher is `btm_token` over the experts with a trained router; the student has the
//! experts' layout and starts from the first expert's (the foundation's) weights. The
//! teacher answers training prompts of both domains (greedy, through the same generation
//! path as serving); the student is then trained on windows of those transcripts to match
//! the teacher's next-token distribution at every position — forward KL(teacher ‖
//! student), optionally mixed with reverse KL(student ‖ teacher) — with AdamW over the
//! differentiable path. The result is an HF-format directory that `expert` loads.
//!
//! Deterministic for a seed (prompt sampling, windows, initial weights); a directory whose
//! `distill.json` records the same options is complete and is not rebuilt unless forced.

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{D, DType, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarBuilder, VarMap};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::chat::ChatMessage;
use crate::corpus;
use crate::error::{ExpertError, Result};
use crate::forge::write_json;
use crate::fusion::{Fusion, TokenRouter, generate_fused};
use crate::generate::SamplingParams;
use crate::loader::LoadedModel;
use crate::model::{Decoder, Path as NumPath};
use crate::router_train::{bar, expert_outputs};

/// What to distil and how.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DistillOptions {
    pub steps: usize,
    /// Training prompts the teacher answers (half reasoning, half SOP).
    pub n_prompts: usize,
    /// Longest teacher answer, in tokens.
    pub max_answer_tokens: usize,
    pub batch_size: usize,
    pub seq_len: usize,
    pub lr: f64,
    /// Weight of reverse KL in the loss (0 = forward KL only).
    pub reverse_kl: f64,
    pub seed: u64,
    /// Train a LoRA adapter of this rank on the first expert instead of all its weights;
    /// the output is then an adapter directory (PEFT layout) over the first expert.
    #[serde(default)]
    pub lora_rank: Option<usize>,
}

impl Default for DistillOptions {
    fn default() -> Self {
        Self {
            steps: 800,
            n_prompts: 400,
            max_answer_tokens: 96,
            batch_size: 8,
            seq_len: 96,
            lr: 1e-3,
            reverse_kl: 0.0,
            seed: 7,
            lora_rank: None,
        }
    }
}

/// `distill.json` of a distilled model.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DistillRecord {
    pub options: DistillOptions,
    pub teacher: Vec<String>,
    /// Tokens in the teacher's transcripts.
    pub transcript_tokens: usize,
    pub teacher_seconds: f64,
    pub train_seconds: f64,
    pub losses: Vec<f32>,
}

/// The teacher's transcripts of training prompts, as one token stream.
fn transcripts(
    experts: &[&LoadedModel],
    router: &TokenRouter,
    opts: &DistillOptions,
) -> Result<Vec<u32>> {
    let first = experts[0];
    let template = first
        .chat_template
        .as_ref()
        .ok_or_else(|| ExpertError::model(&first.dir, "the student needs a chat template"))?;
    let mut prompts: Vec<String> = corpus::reasoning_train(opts.seed, opts.n_prompts / 2)
        .into_iter()
        .chain(corpus::sop_train(
            opts.seed,
            opts.n_prompts - opts.n_prompts / 2,
        ))
        .map(|e| e.prompt)
        .collect();
    let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);
    for i in (1..prompts.len()).rev() {
        let j = rng.random_range(0..=i);
        prompts.swap(i, j);
    }
    let eos = first.eos_token_ids.first().copied();
    let params = SamplingParams {
        max_tokens: opts.max_answer_tokens,
        ..SamplingParams::default()
    };
    let pb = bar(prompts.len(), "teacher");
    let mut stream = Vec::new();
    for p in &prompts {
        let ids = first
            .tokenizer
            .encode(&template.render(&[ChatMessage::user(p)], true)?)?;
        let fusion = Fusion::BtmToken {
            models: experts.to_vec(),
            router,
            hard: false,
        };
        let g = generate_fused(fusion, &ids, &params, |_, _| true)?;
        stream.extend_from_slice(&ids);
        stream.extend_from_slice(&g.generation.tokens);
        stream.extend(eos);
        pb.inc(1);
    }
    pb.finish_and_clear();
    Ok(stream)
}

/// Log-probabilities `[n, vocab]` of the teacher (`btm_token` mixture) on windows `x`.
fn teacher_logp(experts: &[&LoadedModel], router: &TokenRouter, x: &Tensor) -> Result<Tensor> {
    let (hidden, logps) = expert_outputs(experts, x)?;
    let w = router.weights(&hidden)?; // [n, E]
    // log Σ_e w_e p_e, stably.
    let terms: Vec<Tensor> = logps
        .iter()
        .enumerate()
        .map(|(e, lp)| Ok(lp.broadcast_add(&w.narrow(1, e, 1)?.log()?)?))
        .collect::<Result<_>>()?;
    let stacked = Tensor::stack(&terms, 0)?; // [E, n, V]
    let max = stacked.max_keepdim(0)?;
    let lse = (stacked.broadcast_sub(&max)?.exp()?.sum_keepdim(0)?.log()? + max)?;
    Ok(lse.squeeze(0)?.detach())
}

/// Is `dir` a finished distillation with these options?
fn is_complete(dir: &Path, opts: &DistillOptions) -> bool {
    std::fs::read(dir.join("distill.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<DistillRecord>(&b).ok())
        .is_some_and(|r| &r.options == opts)
}

/// What the student trains: all of its weights, or a LoRA adapter over the first expert.
enum Student {
    Full(VarMap),
    Lora {
        config: crate::lora::AdapterConfig,
        vars: Vec<(String, candle_core::Var)>,
    },
}

/// Distils `btm_token(experts, router)` into one model written to `out` (HF layout, or with
/// `lora_rank` a LoRA adapter directory over the first expert; plus `distill.json`).
/// Returns the record; an existing complete `out` is kept unless `force`.
pub fn distill(
    experts: &[&LoadedModel],
    router: &TokenRouter,
    opts: &DistillOptions,
    out: &Path,
    force: bool,
) -> Result<DistillRecord> {
    if !force && is_complete(out, opts) {
        let bytes = std::fs::read(out.join("distill.json"))
            .map_err(|e| ExpertError::io(out.join("distill.json"), e))?;
        return serde_json::from_slice(&bytes)
            .map_err(|e| ExpertError::model(out, format!("bad distill.json: {e}")));
    }
    if experts.len() < 2 {
        return Err(ExpertError::Training(
            "distillation needs two or more experts".into(),
        ));
    }
    if opts.steps == 0 || opts.n_prompts < 2 || opts.batch_size == 0 || opts.seq_len < 2 {
        return Err(ExpertError::Training(format!(
            "steps, batch_size, seq_len and n_prompts (≥ 2) must be positive: {opts:?}"
        )));
    }
    let first = experts[0];
    let device = first.decoder.device().clone();
    let started = Instant::now();
    let stream = transcripts(experts, router, opts)?;
    let teacher_seconds = started.elapsed().as_secs_f64();
    let (b, t) = (opts.batch_size, opts.seq_len);
    if stream.len() <= t + 1 {
        return Err(ExpertError::Training(format!(
            "the teacher's transcripts have {} tokens, fewer than one window of {t}",
            stream.len()
        )));
    }

    // The student: the foundation's layout and weights, all trained or under an adapter.
    let (student, trained) = match opts.lora_rank {
        None => {
            let varmap = VarMap::new();
            let vb = VarBuilder::from_varmap(&varmap, DType::F32, &device);
            let student = Decoder::new(first.decoder.config(), vb)?;
            let weights = first.dir.join("model.safetensors");
            let mut varmap = varmap;
            varmap.load(&weights).map_err(|e| {
                ExpertError::model(&weights, format!("cannot initialise the student: {e}"))
            })?;
            (student, Student::Full(varmap))
        }
        Some(rank) => {
            if crate::lora::is_adapter_dir(&first.dir) {
                return Err(ExpertError::model(
                    &first.dir,
                    "a LoRA student needs a model directory as the first expert, not an adapter",
                ));
            }
            let (_, base_ref) = crate::lora::adapter_location(&first.dir, out)?;
            let config = crate::lora::config_for(rank, &base_ref);
            let mut student = crate::loader::load_model(&first.dir, DType::F32, &device)?.decoder;
            let vars = crate::lora::attach(&mut student, &config, opts.seed)?;
            (student, Student::Lora { config, vars })
        }
    };
    let params = match &trained {
        Student::Full(varmap) => varmap.all_vars(),
        Student::Lora { vars, .. } => vars.iter().map(|(_, v)| v.clone()).collect(),
    };
    let mut opt = AdamW::new(
        params,
        ParamsAdamW {
            lr: opts.lr,
            weight_decay: 0.0,
            ..ParamsAdamW::default()
        },
    )?;
    let mut rng = ChaCha8Rng::seed_from_u64(opts.seed ^ 0xd157);
    let train_started = Instant::now();
    let pb = bar(opts.steps, "distill");
    let mut losses = Vec::with_capacity(opts.steps);
    for _ in 0..opts.steps {
        let mut x = Vec::with_capacity(b * t);
        for _ in 0..b {
            let s = rng.random_range(0..stream.len() - t);
            x.extend_from_slice(&stream[s..s + t]);
        }
        let x = Tensor::from_vec(x, (b, t), &device)?;
        let teacher = teacher_logp(experts, router, &x)?;
        let logits = student
            .forward(&x, None, false, false, NumPath::Differentiable)?
            .logits
            .reshape((b * t, ()))?;
        let student_logp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
        let p_teacher = teacher.exp()?;
        let forward = (&p_teacher * (&teacher - &student_logp)?)?
            .sum(D::Minus1)?
            .mean_all()?;
        let loss = if opts.reverse_kl > 0.0 {
            let q = student_logp.exp()?;
            let reverse = (&q * (&student_logp - &teacher)?)?
                .sum(D::Minus1)?
                .mean_all()?;
            ((forward * (1.0 - opts.reverse_kl))? + (reverse * opts.reverse_kl)?)?
        } else {
            forward
        };
        opt.backward_step(&loss)?;
        let l = loss.to_scalar::<f32>()?;
        if !l.is_finite() {
            return Err(ExpertError::Training(format!("the loss became {l}")));
        }
        losses.push(l);
        pb.set_message(format!("KL {l:.4}"));
        pb.inc(1);
    }
    pb.finish_and_clear();

    let record = DistillRecord {
        options: opts.clone(),
        teacher: experts.iter().map(|m| m.name.clone()).collect(),
        transcript_tokens: stream.len(),
        teacher_seconds,
        train_seconds: train_started.elapsed().as_secs_f64(),
        losses,
    };
    // Written beside the target and renamed into place when complete.
    let tmp = temp_sibling(out)?;
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| ExpertError::io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| ExpertError::io(&tmp, e))?;
    match &trained {
        Student::Full(varmap) => {
            for f in [
                "config.json",
                "tokenizer.json",
                "tokenizer_config.json",
                "generation_config.json",
            ] {
                let src = first.dir.join(f);
                if src.exists() {
                    std::fs::copy(&src, tmp.join(f)).map_err(|e| ExpertError::io(&src, e))?;
                }
            }
            varmap.save(tmp.join("model.safetensors"))?;
        }
        Student::Lora { config, vars } => crate::lora::write_adapter(&tmp, config, vars)?,
    }
    write_json(&tmp.join("distill.json"), &record)?;
    if out.exists() {
        std::fs::remove_dir_all(out).map_err(|e| ExpertError::io(out, e))?;
    }
    std::fs::rename(&tmp, out).map_err(|e| ExpertError::io(out, e))?;
    Ok(record)
}

fn temp_sibling(out: &Path) -> Result<PathBuf> {
    let name = out
        .file_name()
        .ok_or_else(|| ExpertError::Training(format!("bad output path {}", out.display())))?;
    let parent = out.parent().unwrap_or_else(|| Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| ExpertError::io(parent, e))?;
    Ok(parent.join(format!(".{}.tmp", name.to_string_lossy())))
}

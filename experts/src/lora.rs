//! LoRA adapters (arXiv:2106.09685): a frozen base model plus trainable low-rank updates
//! `W' = W + (alpha / r) · B A` on its attention and MLP projections.
//!
//! An adapter directory is laid out like a PEFT one, so the same files load in Python:
//!
//! ```text
//! adapter_config.json          {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": [...],
//!                               "base_model_name_or_path": "../../models/smollm2-135m-instruct", ...}
//! adapter_model.safetensors    base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight [r, in]
//!                              base_model.model.model.layers.{i}.self_attn.q_proj.lora_B.weight [out, r] …
//! ```
//!
//! A relative `base_model_name_or_path` is resolved against the adapter directory. The
//! loader ([`crate::loader`]) treats a directory holding `adapter_config.json` and no
//! `config.json` as "this base with this adapter merged" — every program that takes a
//! model directory takes an adapter directory too. Merging happens once, at load time, so
//! serving runs plain dense (or requantized) weights at the base model's speed.
//!
//! [`train`] fine-tunes an adapter on SOP material ([`crate::corpus`]) with the loss on the
//! answer tokens only: deterministic for a seed, with a progress bar and a per-step log.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Module, Shape, Tensor, Var};
use candle_nn::{AdamW, Linear, Optimizer, ParamsAdamW};
use indicatif::{ProgressBar, ProgressStyle};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::corpus::{self, Lang};
use crate::error::{ExpertError, Result};
use crate::loader::{LoadedModel, load_model};
use crate::model::{Decoder, Path as NumPath, Proj};

/// File names of an adapter directory.
pub const ADAPTER_CONFIG: &str = "adapter_config.json";
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";
/// What [`train`] writes beside the adapter.
pub const TRAIN_REPORT: &str = "train_report.json";
pub const TRAIN_LOG: &str = "train_log.jsonl";

/// Every projection a LoRA adapter may target.
pub const TARGETS: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

/// PEFT's tensor-name prefix.
const PREFIX: &str = "base_model.model.";

/// `adapter_config.json`: the PEFT keys this project writes and reads. Other PEFT keys are
/// accepted and ignored; values this loader cannot honour are errors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdapterConfig {
    pub peft_type: String,
    pub r: usize,
    pub lora_alpha: f64,
    pub target_modules: Vec<String>,
    pub base_model_name_or_path: String,
    #[serde(default)]
    pub lora_dropout: f64,
    #[serde(default = "bias_none")]
    pub bias: String,
    #[serde(default)]
    pub fan_in_fan_out: bool,
    #[serde(default)]
    pub use_rslora: bool,
    #[serde(default)]
    pub task_type: Option<String>,
}

fn bias_none() -> String {
    "none".into()
}

impl AdapterConfig {
    /// `alpha / r` (or `alpha / √r` with rsLoRA).
    pub fn scale(&self) -> f64 {
        if self.use_rslora {
            self.lora_alpha / (self.r as f64).sqrt()
        } else {
            self.lora_alpha / self.r as f64
        }
    }

    fn validate(&self, path: &Path) -> Result<()> {
        let bad = |m: String| Err(ExpertError::model(path, m));
        if !self.peft_type.eq_ignore_ascii_case("lora") {
            return bad(format!("peft_type {:?} is not LORA", self.peft_type));
        }
        if self.r == 0 {
            return bad("r must be at least 1".into());
        }
        if !self.lora_alpha.is_finite() {
            return bad("lora_alpha must be a finite number".into());
        }
        if self.bias != "none" {
            return bad(format!("bias {:?}: only \"none\" is supported", self.bias));
        }
        if self.fan_in_fan_out {
            return bad("fan_in_fan_out adapters are not supported".into());
        }
        if self.target_modules.is_empty() {
            return bad("target_modules is empty".into());
        }
        if let Some(t) = self
            .target_modules
            .iter()
            .find(|t| !TARGETS.contains(&t.as_str()))
        {
            return bad(format!(
                "target module {t:?} is not one of {}",
                TARGETS.join(", ")
            ));
        }
        Ok(())
    }
}

/// Whether `dir` is an adapter directory (an adapter config and no model config).
pub fn is_adapter_dir(dir: &Path) -> bool {
    dir.join(ADAPTER_CONFIG).is_file() && !dir.join("config.json").exists()
}

/// Reads and validates `adapter_config.json`.
pub fn read_config(dir: &Path) -> Result<AdapterConfig> {
    let path = dir.join(ADAPTER_CONFIG);
    let bytes = std::fs::read(&path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => {
            ExpertError::model(dir, format!("{ADAPTER_CONFIG} is missing"))
        }
        _ => ExpertError::io(&path, e),
    })?;
    let cfg: AdapterConfig = serde_json::from_slice(&bytes)
        .map_err(|e| ExpertError::model(&path, format!("bad {ADAPTER_CONFIG}: {e}")))?;
    cfg.validate(&path)?;
    Ok(cfg)
}

/// The base model directory of the adapter in `dir`.
pub fn base_dir(dir: &Path) -> Result<PathBuf> {
    let cfg = read_config(dir)?;
    let base = Path::new(&cfg.base_model_name_or_path);
    let base = if base.is_absolute() {
        base.to_path_buf()
    } else {
        dir.join(base)
    };
    if !base.join("config.json").is_file() {
        return Err(ExpertError::model(
            dir.join(ADAPTER_CONFIG),
            format!(
                "base_model_name_or_path {:?} is not a model directory ({} has no config.json); \
                 for SmolLM2 run `expert pull smollm2` first",
                cfg.base_model_name_or_path,
                base.display()
            ),
        ));
    }
    Ok(base)
}

fn tensor_name(module: &str, which: char) -> String {
    format!("{PREFIX}{module}.lora_{which}.weight")
}

fn targeted(cfg: &AdapterConfig, module: &str) -> bool {
    let leaf = module.rsplit('.').next().unwrap_or(module);
    cfg.target_modules.iter().any(|t| t == leaf)
}

/// Merges the adapter in `dir` into `decoder`'s dense projections (`W += scale · B A`).
/// Every targeted projection must have its two tensors with matching shapes, and every
/// tensor in the file must belong to a projection: an adapter trained for another model
/// fails here, naming the tensor. Returns how many projections were updated.
pub fn merge(decoder: &mut Decoder, dir: &Path) -> Result<usize> {
    let cfg = read_config(dir)?;
    let path = dir.join(ADAPTER_WEIGHTS);
    if !path.is_file() {
        return Err(ExpertError::model(
            dir,
            format!("{ADAPTER_WEIGHTS} is missing"),
        ));
    }
    let device = decoder.device().clone();
    let mut tensors: HashMap<String, Tensor> = candle_core::safetensors::load(&path, &device)
        .map_err(|e| ExpertError::model(&path, format!("corrupt safetensors: {e}")))?;
    let scale = cfg.scale();
    let mut merged = 0;
    for (module, proj) in decoder.projections_mut() {
        if !targeted(&cfg, &module) {
            continue;
        }
        let (an, bn) = (tensor_name(&module, 'A'), tensor_name(&module, 'B'));
        let missing = |n: &str| ExpertError::model(&path, format!("tensor {n} is missing"));
        let a = tensors.remove(&an).ok_or_else(|| missing(&an))?;
        let b = tensors.remove(&bn).ok_or_else(|| missing(&bn))?;
        let Proj::Dense(base) = proj else {
            return Err(ExpertError::model(
                &path,
                format!("{module} is not dense; merge adapters before quantizing"),
            ));
        };
        let w = base.weight();
        let (out, inp) = w.dims2()?;
        if a.dims() != [cfg.r, inp] || b.dims() != [out, cfg.r] {
            return Err(ExpertError::model(
                &path,
                format!(
                    "{module}: lora_A {:?} and lora_B {:?} do not fit a [{out}, {inp}] weight at r = {}",
                    a.dims(),
                    b.dims(),
                    cfg.r
                ),
            ));
        }
        let delta = (b.to_dtype(DType::F32)?.matmul(&a.to_dtype(DType::F32)?)? * scale)?;
        let w = (w.to_dtype(DType::F32)? + delta)?.to_dtype(w.dtype())?;
        *proj = Proj::Dense(Linear::new(w, base.bias().cloned()));
        merged += 1;
    }
    if let Some(extra) = tensors.keys().min() {
        return Err(ExpertError::model(
            &path,
            format!("tensor {extra} belongs to no targeted projection of this model"),
        ));
    }
    Ok(merged)
}

/// `x Wᵀ` for a weight that does not train. candle's matmul backward computes the gradient
/// of both operands; this op returns the input's only, which saves a third of a LoRA
/// step's arithmetic (and the LM head's `[vocab, hidden]` weight gradient).
struct FrozenMatmul {
    /// `[out, in]`, f32, on the CPU.
    weight: Tensor,
}

impl CustomOp1 for FrozenMatmul {
    fn name(&self) -> &'static str {
        "frozen-matmul"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (start, end) = layout.contiguous_offsets().ok_or_else(|| {
            candle_core::Error::Msg("frozen matmul: the input is not contiguous".into())
        })?;
        let (out, inp) = self.weight.dims2()?;
        let dims = layout.dims();
        if dims.last() != Some(&inp) {
            return Err(candle_core::Error::Msg(format!(
                "frozen matmul: input {dims:?} does not end in {inp}"
            )));
        }
        let rows = layout.shape().elem_count() / inp;
        let x = Tensor::from_slice(
            &storage.as_slice::<f32>()?[start..end],
            (rows, inp),
            &Device::Cpu,
        )?;
        let y = x
            .matmul(&self.weight.t()?)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let mut shape = dims.to_vec();
        if let Some(last) = shape.last_mut() {
            *last = out;
        }
        Ok((CpuStorage::F32(y), Shape::from(shape)))
    }

    fn bwd(
        &self,
        arg: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let out = self.weight.dim(0)?;
        let rows = grad.elem_count() / out;
        let g = grad
            .reshape((rows, out))?
            .matmul(&self.weight)?
            .reshape(arg.shape())?;
        Ok(Some(g))
    }
}

/// `l(x)` with `l`'s weights held fixed: on the CPU in f32 through [`FrozenMatmul`],
/// elsewhere through the plain (weight-differentiating) path.
pub(crate) fn frozen_linear(l: &Linear, x: &Tensor) -> Result<Tensor> {
    let w = l.weight();
    if !matches!(x.device(), Device::Cpu) || x.dtype() != DType::F32 || w.dtype() != DType::F32 {
        return Ok(l.forward(x)?);
    }
    let y = x
        .contiguous()?
        .apply_op1(FrozenMatmul { weight: w.clone() })?;
    Ok(match l.bias() {
        Some(b) => y.broadcast_add(b)?,
        None => y,
    })
}

/// `target` relative to the directory `from` (both absolute), as an adapter config records
/// its base (`base_model_name_or_path`).
fn relative_ref(target: &Path, from: &Path) -> String {
    let t: Vec<_> = target.components().collect();
    let f: Vec<_> = from.components().collect();
    let common = t.iter().zip(&f).take_while(|(a, b)| a == b).count();
    let mut out = PathBuf::new();
    for _ in common..f.len() {
        out.push("..");
    }
    for c in &t[common..] {
        out.push(c);
    }
    out.to_string_lossy().into_owned()
}

/// Where an adapter written to `out` will live (absolute; its parent directory is created)
/// and how its config then names `base` (relative to the adapter directory).
pub fn adapter_location(base: &Path, out: &Path) -> Result<(PathBuf, String)> {
    let base = std::fs::canonicalize(base).map_err(|e| ExpertError::io(base, e))?;
    let name = out.file_name().ok_or_else(|| {
        ExpertError::Training(format!(
            "the output path {} names no directory",
            out.display()
        ))
    })?;
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| ExpertError::io(parent, e))?;
    let out = std::fs::canonicalize(parent)
        .map_err(|e| ExpertError::io(parent, e))?
        .join(name);
    let base_ref = relative_ref(&base, &out);
    Ok((out, base_ref))
}

/// A LoRA config of rank `r` (alpha 2r) on every projection of [`TARGETS`], its base at
/// `base_ref` (relative to the adapter directory).
pub fn config_for(r: usize, base_ref: &str) -> AdapterConfig {
    AdapterConfig {
        peft_type: "LORA".into(),
        r,
        lora_alpha: 2.0 * r as f64,
        target_modules: TARGETS.iter().map(|t| (*t).to_string()).collect(),
        base_model_name_or_path: base_ref.into(),
        lora_dropout: 0.0,
        bias: bias_none(),
        fan_in_fan_out: false,
        use_rslora: false,
        task_type: Some("CAUSAL_LM".into()),
    }
}

/// Replaces each targeted dense projection of `decoder` by a LoRA projection with fresh
/// variables: `A` uniform in ±1/√in (seeded), `B` zero, so training starts at the base
/// model. Returns the variables by tensor name.
pub(crate) fn attach(
    decoder: &mut Decoder,
    cfg: &AdapterConfig,
    seed: u64,
) -> Result<Vec<(String, Var)>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let device = decoder.device().clone();
    let scale = cfg.scale();
    let mut vars = Vec::new();
    for (module, proj) in decoder.projections_mut() {
        let Proj::Dense(base) = proj else {
            return Err(ExpertError::Training(format!(
                "{module} is not dense; LoRA trains on f32 weights"
            )));
        };
        if !targeted(cfg, &module) {
            *proj = Proj::Frozen(base.clone());
            continue;
        }
        let (out, inp) = base.weight().dims2()?;
        let bound = 1.0 / (inp as f32).sqrt();
        let a: Vec<f32> = (0..cfg.r * inp)
            .map(|_| rng.random_range(-bound..bound))
            .collect();
        let a = Var::from_tensor(&Tensor::from_vec(a, (cfg.r, inp), &device)?)?;
        let b = Var::from_tensor(&Tensor::zeros((out, cfg.r), DType::F32, &device)?)?;
        *proj = Proj::Lora {
            base: base.clone(),
            a: a.as_tensor().clone(),
            b: b.as_tensor().clone(),
            scale,
        };
        vars.push((tensor_name(&module, 'A'), a));
        vars.push((tensor_name(&module, 'B'), b));
    }
    let head = decoder.lm_head_mut();
    if let Proj::Dense(l) = head {
        *head = Proj::Frozen(l.clone());
    }
    Ok(vars)
}

/// Options of [`train`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainOptions {
    pub rank: usize,
    pub alpha: f64,
    pub targets: Vec<String>,
    pub steps: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub seed: u64,
    /// SOP training examples drawn from the corpus (English).
    pub examples: usize,
    /// Longer examples are cut to this many tokens.
    pub max_len: usize,
    /// How `base_model_name_or_path` is written (relative to the adapter directory).
    pub base_ref: String,
}

/// What [`train`] records in `train_report.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainReport {
    pub options: TrainOptions,
    pub parameters: usize,
    pub examples: usize,
    pub answer_tokens_seen: usize,
    pub seconds: f64,
    pub first_loss: f32,
    pub final_loss: f32,
    /// Mean loss of every 10 steps.
    pub loss_curve: Vec<f32>,
}

/// One line of `train_log.jsonl`.
#[derive(Debug, Serialize)]
struct LogLine {
    step: usize,
    loss: f32,
    lr: f64,
    answer_tokens: usize,
    seconds: f64,
}

/// A chat-formatted example: the prompt's tokens (no loss) and the answer's (with loss).
struct Tokenized {
    prompt: Vec<u32>,
    answer: Vec<u32>,
}

fn tokenize_examples(model: &LoadedModel, opts: &TrainOptions) -> Result<Vec<Tokenized>> {
    if model.chat_template.is_none() {
        return Err(ExpertError::model(
            &model.dir,
            "the base model has no chat template to train on",
        ));
    }
    // English only: the base is English-centric, and Chinese costs many byte tokens.
    let examples: Vec<_> = corpus::sop_train(opts.seed, opts.examples * 2)
        .into_iter()
        .filter(|e| e.lang == Lang::En)
        .take(opts.examples)
        .collect();
    let mut out = Vec::with_capacity(examples.len());
    for ex in examples {
        let prompt = model.user_prompt_ids(&ex.prompt)?;
        let mut answer = model.answer_ids(&ex.answer)?;
        let max_len = opts
            .max_len
            .min(model.decoder.config().max_position_embeddings);
        let room = max_len.saturating_sub(prompt.len());
        if room < 2 {
            continue;
        }
        answer.truncate(room);
        out.push(Tokenized { prompt, answer });
    }
    if out.is_empty() {
        return Err(ExpertError::Training(format!(
            "no training example fits max_len {}",
            opts.max_len
        )));
    }
    Ok(out)
}

/// Cross-entropy over the answer tokens of a right-padded batch.
fn batch_loss(decoder: &Decoder, batch: &[&Tokenized], pad: u32) -> Result<(Tensor, usize)> {
    let device = decoder.device();
    let t = batch
        .iter()
        .map(|e| e.prompt.len() + e.answer.len() - 1)
        .max()
        .unwrap_or(1);
    let mut inputs = Vec::with_capacity(batch.len() * t);
    let mut rows = Vec::new();
    let mut targets = Vec::new();
    for (i, e) in batch.iter().enumerate() {
        let ids: Vec<u32> = e.prompt.iter().chain(&e.answer).copied().collect();
        let n = ids.len() - 1;
        inputs.extend_from_slice(&ids[..n]);
        inputs.extend(std::iter::repeat_n(pad, t - n));
        // Position p predicts ids[p + 1]; the answer starts at ids[prompt.len()].
        for p in e.prompt.len() - 1..n {
            rows.push((i * t + p) as u32);
            targets.push(ids[p + 1]);
        }
    }
    let inputs = Tensor::from_vec(inputs, (batch.len(), t), device)?;
    let path = NumPath::Differentiable;
    let mut h = decoder.embed(&inputs)?;
    for i in 0..decoder.config().num_hidden_layers {
        h = decoder.layer(i, &h, None, 0, path)?;
    }
    // The LM head runs on the answer positions only.
    let hidden = h.dim(2)?;
    let n = rows.len();
    let h = h
        .reshape((batch.len() * t, hidden))?
        .index_select(&Tensor::from_vec(rows, n, device)?, 0)?;
    let logits = decoder.lm_head(&decoder.final_norm(&h, path)?)?;
    let targets = Tensor::from_vec(targets, n, device)?;
    Ok((candle_nn::loss::cross_entropy(&logits, &targets)?, n))
}

pub(crate) fn write_adapter(dir: &Path, cfg: &AdapterConfig, vars: &[(String, Var)]) -> Result<()> {
    let tensors: HashMap<String, Tensor> = vars
        .iter()
        .map(|(n, v)| Ok((n.clone(), v.as_tensor().to_dtype(DType::F16)?)))
        .collect::<Result<_>>()?;
    let path = dir.join(ADAPTER_WEIGHTS);
    candle_core::safetensors::save(&tensors, &path)
        .map_err(|e| ExpertError::model(&path, format!("cannot write: {e}")))?;
    crate::forge::write_json(&dir.join(ADAPTER_CONFIG), cfg)
}

/// Fine-tunes a LoRA adapter of the model in `base` on SOP answers and writes it to `out`
/// (under a temporary name, renamed when complete). A complete adapter trained with the
/// same options is kept as it is; anything else is retrained from the start (same seed,
/// same result).
pub fn train(base: &Path, out: &Path, opts: &TrainOptions) -> Result<TrainReport> {
    if let Ok(bytes) = std::fs::read(out.join(TRAIN_REPORT))
        && let Ok(report) = serde_json::from_slice::<TrainReport>(&bytes)
        && report.options == *opts
        && out.join(ADAPTER_WEIGHTS).is_file()
    {
        return Ok(report);
    }
    if opts.rank == 0 || opts.steps == 0 || opts.batch_size == 0 || opts.examples == 0 {
        return Err(ExpertError::Training(
            "rank, steps, batch size and examples must each be at least 1".into(),
        ));
    }
    let cfg = AdapterConfig {
        peft_type: "LORA".into(),
        r: opts.rank,
        lora_alpha: opts.alpha,
        target_modules: opts.targets.clone(),
        base_model_name_or_path: opts.base_ref.clone(),
        lora_dropout: 0.0,
        bias: bias_none(),
        fan_in_fan_out: false,
        use_rslora: false,
        task_type: Some("CAUSAL_LM".into()),
    };
    cfg.validate(Path::new(ADAPTER_CONFIG))
        .map_err(|e| ExpertError::Training(e.to_string()))?;
    let mut model = load_model(base, DType::F32, &Device::Cpu)?;
    let data = tokenize_examples(&model, opts)?;
    let vars = attach(&mut model.decoder, &cfg, opts.seed)?;
    let parameters = vars.iter().map(|(_, v)| v.elem_count()).sum();
    let pad = model.eos_token_ids.first().copied().unwrap_or(0);

    let parent = out.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| ExpertError::io(parent, e))?;
    let tmp = parent.join(format!(
        ".{}.partial",
        out.file_name()
            .map_or_else(|| "adapter".into(), |n| n.to_string_lossy())
    ));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| ExpertError::io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| ExpertError::io(&tmp, e))?;
    let log_path = tmp.join(TRAIN_LOG);
    let mut log = std::io::BufWriter::new(
        std::fs::File::create(&log_path).map_err(|e| ExpertError::io(&log_path, e))?,
    );

    let mut opt = AdamW::new(
        vars.iter().map(|(_, v)| v.clone()).collect(),
        ParamsAdamW {
            lr: opts.lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        },
    )?;
    let mut rng = ChaCha8Rng::seed_from_u64(opts.seed ^ 0x10_4a);
    let mut order: Vec<usize> = (0..data.len()).collect();
    order.shuffle(&mut rng);
    let mut cursor = 0;
    let bar = ProgressBar::new(opts.steps as u64).with_style(
        ProgressStyle::with_template(
            "{prefix:>12} {bar:40} {pos}/{len} steps {msg} [{elapsed_precise}<{eta_precise}]",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_prefix("lora sft");
    let started = Instant::now();
    let warmup = (opts.steps / 10).max(1);
    let (mut first, mut last) = (f32::NAN, f32::NAN);
    let (mut curve, mut window) = (Vec::new(), Vec::new());
    let mut seen = 0;
    for step in 0..opts.steps {
        let mut batch = Vec::with_capacity(opts.batch_size);
        for _ in 0..opts.batch_size {
            if cursor == order.len() {
                order.shuffle(&mut rng);
                cursor = 0;
            }
            batch.push(&data[order[cursor]]);
            cursor += 1;
        }
        let (loss, n) = batch_loss(&model.decoder, &batch, pad)?;
        let lr = if step < warmup {
            opts.lr * (step + 1) as f64 / warmup as f64
        } else {
            let p = (step - warmup) as f64 / (opts.steps - warmup).max(1) as f64;
            opts.lr * 0.5 * (1.0 + (std::f64::consts::PI * p).cos())
        };
        opt.set_learning_rate(lr);
        opt.backward_step(&loss)?;
        let l = loss.to_scalar::<f32>()?;
        if !l.is_finite() {
            return Err(ExpertError::Training(format!(
                "loss became {l} at step {step}"
            )));
        }
        if step == 0 {
            first = l;
        }
        last = l;
        seen += n;
        window.push(l);
        if window.len() == 10 || step + 1 == opts.steps {
            curve.push(window.iter().sum::<f32>() / window.len() as f32);
            window.clear();
        }
        let line = LogLine {
            step,
            loss: l,
            lr,
            answer_tokens: n,
            seconds: started.elapsed().as_secs_f64(),
        };
        // One line per step, flushed, so a run can be followed with `tail -f`.
        serde_json::to_writer(&mut log, &line).map_err(|e| ExpertError::Training(e.to_string()))?;
        log.write_all(b"\n")
            .and_then(|()| log.flush())
            .map_err(|e| ExpertError::io(&log_path, e))?;
        bar.set_message(format!("loss {l:.3}"));
        bar.inc(1);
    }
    bar.finish_and_clear();
    drop(log);
    write_adapter(&tmp, &cfg, &vars)?;
    let report = TrainReport {
        options: opts.clone(),
        parameters,
        examples: data.len(),
        answer_tokens_seen: seen,
        seconds: started.elapsed().as_secs_f64(),
        first_loss: first,
        final_loss: last,
        loss_curve: curve,
    };
    crate::forge::write_json(&tmp.join(TRAIN_REPORT), &report)?;
    if out.exists() {
        std::fs::remove_dir_all(out).map_err(|e| ExpertError::io(out, e))?;
    }
    std::fs::rename(&tmp, out).map_err(|e| ExpertError::io(out, e))?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::config::{Architecture, ModelConfig};
    use candle_nn::{VarBuilder, VarMap};

    fn tiny(seed: u64) -> Decoder {
        let cfg = ModelConfig {
            architecture: Architecture::Llama,
            vocab_size: 53,
            hidden_size: 24,
            intermediate_size: 40,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            head_dim: 6,
            max_position_embeddings: 32,
            rms_norm_eps: 1e-6,
            rope_theta: 10_000.0,
            tie_word_embeddings: true,
            qkv_bias: false,
            bos_token_id: None,
            eos_token_ids: vec![0],
        };
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let d = Decoder::new(&cfg, vb).unwrap();
        let mut names: Vec<String> = varmap.data().lock().unwrap().keys().cloned().collect();
        names.sort();
        let data = varmap.data().lock().unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        for name in names {
            let var = &data[&name];
            let v: Vec<f32> = (0..var.elem_count())
                .map(|_| rng.random_range(-0.3..0.3))
                .collect();
            var.set(&Tensor::from_vec(v, var.shape(), &Device::Cpu).unwrap())
                .unwrap();
        }
        d
    }

    fn config(targets: &[&str]) -> AdapterConfig {
        AdapterConfig {
            peft_type: "LORA".into(),
            r: 3,
            lora_alpha: 6.0,
            target_modules: targets.iter().map(|t| t.to_string()).collect(),
            base_model_name_or_path: "base".into(),
            lora_dropout: 0.0,
            bias: bias_none(),
            fan_in_fan_out: false,
            use_rslora: false,
            task_type: None,
        }
    }

    fn logits(d: &Decoder) -> Tensor {
        let ids = Tensor::new(&[[3u32, 7, 11, 2, 40]], &Device::Cpu).unwrap();
        d.forward(&ids, None, false, false, NumPath::Differentiable)
            .unwrap()
            .logits
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    /// Attaches an adapter with non-zero, f16-representable `B`s to a copy of `tiny(1)`.
    fn trained(cfg: &AdapterConfig) -> (Decoder, Vec<(String, Var)>) {
        let mut d = tiny(1);
        let vars = attach(&mut d, cfg, 9).unwrap();
        // Seeded, so the test sees the same adapter every run.
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        for (i, (_, v)) in vars.iter().enumerate() {
            let shape = v.as_tensor().shape().clone();
            let values: Vec<f32> = (0..shape.elem_count())
                .map(|_| rng.random_range(-0.2f32..0.2))
                .collect();
            let t = Tensor::from_vec(values, shape, &Device::Cpu)
                .unwrap()
                .to_dtype(DType::F16)
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap();
            // Keep A's seeded values for half of them, so both kinds are exercised.
            if i % 4 != 0 {
                v.set(&t).unwrap();
            } else {
                let a = v
                    .as_tensor()
                    .to_dtype(DType::F16)
                    .unwrap()
                    .to_dtype(DType::F32)
                    .unwrap();
                v.set(&a).unwrap();
            }
        }
        (d, vars)
    }

    #[test]
    fn a_merged_adapter_computes_what_the_unmerged_one_does() {
        for targets in [&TARGETS[..], &["q_proj", "down_proj"][..]] {
            let cfg = config(targets);
            let (with_lora, vars) = trained(&cfg);
            let dir = tempfile::tempdir().unwrap();
            write_adapter(dir.path(), &cfg, &vars).unwrap();
            let mut merged = tiny(1);
            let n = merge(&mut merged, dir.path()).unwrap();
            assert_eq!(n, 2 * targets.len());
            let (a, b) = (logits(&with_lora), logits(&merged));
            assert!(max_diff(&a, &b) < 1e-4, "{targets:?}: {}", max_diff(&a, &b));
            // And the adapter changed the model.
            assert!(max_diff(&logits(&tiny(1)), &b) > 1e-2);
        }
    }

    #[test]
    fn a_fresh_adapter_starts_at_the_base_model() {
        let mut d = tiny(2);
        let base = logits(&d);
        attach(&mut d, &config(&TARGETS), 3).unwrap();
        assert!(max_diff(&base, &logits(&d)) < 1e-6);
    }

    #[test]
    fn the_frozen_matmul_passes_the_gradient_of_a_plain_linear() {
        let x =
            Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 3, 5), &Device::Cpu).unwrap()).unwrap();
        let w = Tensor::randn(0f32, 1.0, (4, 5), &Device::Cpu).unwrap();
        let bias = Tensor::randn(0f32, 1.0, 4, &Device::Cpu).unwrap();
        let l = Linear::new(w, Some(bias));
        let target = Tensor::randn(0f32, 1.0, (2, 3, 4), &Device::Cpu).unwrap();
        let loss = |y: Tensor| (y * &target).unwrap().sum_all().unwrap();
        let frozen = frozen_linear(&l, x.as_tensor()).unwrap();
        let plain = l.forward(x.as_tensor()).unwrap();
        assert!(max_diff(&frozen, &plain) < 1e-5);
        let g1 = loss(frozen).backward().unwrap();
        let g2 = loss(plain).backward().unwrap();
        let (g1, g2) = (
            g1.get(x.as_tensor()).unwrap(),
            g2.get(x.as_tensor()).unwrap(),
        );
        assert!(max_diff(g1, g2) < 1e-5);
    }

    #[test]
    fn broken_adapters_are_clear_errors() {
        let cfg = config(&["q_proj", "v_proj"]);
        let (_, vars) = trained(&cfg);
        let check = |edit: &dyn Fn(&Path), want: &str| {
            let dir = tempfile::tempdir().unwrap();
            write_adapter(dir.path(), &cfg, &vars).unwrap();
            edit(dir.path());
            let e = merge(&mut tiny(1), dir.path()).unwrap_err().to_string();
            assert!(e.contains(want), "{want:?} not in {e:?}");
        };
        let write_cfg = |dir: &Path, f: &dyn Fn(&mut serde_json::Value)| {
            let p = dir.join(ADAPTER_CONFIG);
            let mut v: serde_json::Value =
                serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
            f(&mut v);
            std::fs::write(&p, serde_json::to_vec(&v).unwrap()).unwrap();
        };
        let weights = |dir: &Path, f: &dyn Fn(&mut HashMap<String, Tensor>)| {
            let p = dir.join(ADAPTER_WEIGHTS);
            let mut t = candle_core::safetensors::load(&p, &Device::Cpu).unwrap();
            f(&mut t);
            candle_core::safetensors::save(&t, &p).unwrap();
        };
        check(
            &|d| std::fs::remove_file(d.join(ADAPTER_WEIGHTS)).unwrap(),
            "adapter_model.safetensors is missing",
        );
        check(
            &|d| std::fs::write(d.join(ADAPTER_WEIGHTS), b"not safetensors").unwrap(),
            "corrupt safetensors",
        );
        check(
            &|d| std::fs::write(d.join(ADAPTER_CONFIG), "{").unwrap(),
            "bad adapter_config.json",
        );
        check(
            &|d| write_cfg(d, &|v| v["peft_type"] = "IA3".into()),
            "is not LORA",
        );
        check(
            &|d| {
                write_cfg(d, &|v| {
                    v["target_modules"] = serde_json::json!(["q_proj", "wq"])
                })
            },
            "target module \"wq\"",
        );
        check(
            &|d| write_cfg(d, &|v| v["r"] = 0.into()),
            "r must be at least 1",
        );
        check(
            &|d| write_cfg(d, &|v| v["r"] = 2.into()),
            "do not fit a [24, 24] weight at r = 2",
        );
        check(
            &|d| {
                weights(d, &|t| {
                    t.remove("base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight");
                })
            },
            "tensor base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight is missing",
        );
        check(
            &|d| {
                weights(d, &|t| {
                    t.insert(
                        "base_model.model.model.layers.7.self_attn.q_proj.lora_A.weight".into(),
                        Tensor::zeros((3, 24), DType::F16, &Device::Cpu).unwrap(),
                    );
                })
            },
            "layers.7.self_attn.q_proj.lora_A.weight belongs to no targeted projection",
        );
    }

    #[test]
    fn a_missing_base_names_the_path_and_the_remedy() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = AdapterConfig {
            base_model_name_or_path: "../nowhere/smollm2".into(),
            ..config(&["q_proj"])
        };
        crate::forge::write_json(&dir.path().join(ADAPTER_CONFIG), &cfg).unwrap();
        assert!(is_adapter_dir(dir.path()));
        let e = base_dir(dir.path()).unwrap_err().to_string();
        assert!(
            e.contains("../nowhere/smollm2") && e.contains("expert pull smollm2"),
            "{e}"
        );
    }
}

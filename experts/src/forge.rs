//! The forge: builds, by real training and deterministically, a small bilingual model pair
//! in Hugging Face format — the "branch" and "train" of Branch-Train-Merge:
//!
//! 1. a byte-level BPE tokenizer trained with `tokenizers` on the corpora;
//! 2. `foundation`: a Qwen2-layout decoder trained from scratch on general text and
//!    reasoning material with exact answers;
//! 3. `sft-sop`: branched from `foundation` and fine-tuned on SOP procedures only, so it
//!    gains on SOP and loses on reasoning;
//! 4. held-out eval sets (`eval/reasoning.jsonl`, `eval/sop.jsonl`) that no training saw.
//!
//! Training uses candle-nn's AdamW and cross-entropy over the differentiable path of the
//! same decoder that serves. Weights are initialised from a seeded ChaCha stream, batches
//! are drawn from a seeded stream too, so the same seed gives the same weights on the same
//! machine. Each model directory is written under a temporary name and renamed when
//! complete; re-running skips complete models, and a run stopped midway restarts that model
//! from its beginning (same seed, same result).

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarBuilder, VarMap};
use indicatif::{ProgressBar, ProgressStyle};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
use tokenizers::normalizers::NormalizerWrapper;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, SplitDelimiterBehavior, TokenizerBuilder, TokenizerImpl};

use crate::chat::{ChatMessage, ChatTemplate};
use crate::config::{Architecture, ModelConfig};
use crate::corpus::{self, Domain, Example};
use crate::error::{ExpertError, Result};
use crate::generate::{SamplingParams, generate};
use crate::loader::{LoadedModel, load_model};
use crate::model::{Decoder, Path as NumPath};
use crate::quality::{answer_match, token_f1};

/// The ChatML template every forged model carries in `tokenizer_config.json`.
pub const CHAT_TEMPLATE: &str = "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";
pub const EOS: &str = "<|im_end|>";
pub const BOS: &str = "<|im_start|>";
pub const END_OF_TEXT: &str = "<|endoftext|>";

/// Bumped whenever a change to the forge changes what it writes; complete models of an
/// older version are rebuilt.
pub const FORGE_VERSION: u32 = 2;

/// Qwen2's pre-tokenisation: letters in runs, every digit on its own (arithmetic sees
/// digits), punctuation and whitespace split off. The same pattern `transformers` applies
/// to Qwen2 tokenizers, so token ids agree with it.
pub const PRETOKENIZE_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Sizes and schedules of one forge run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ForgeProfile {
    pub name: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub intermediate_size: usize,
    pub context: usize,
    pub seq_len: usize,
    pub batch_size: usize,
    pub foundation_steps: usize,
    pub sft_steps: usize,
    pub foundation_lr: f64,
    pub sft_lr: f64,
    pub n_general: usize,
    pub n_reasoning: usize,
    pub n_sop: usize,
    pub n_eval: usize,
}

impl ForgeProfile {
    /// The fast profile for tests: seconds to a minute on 2 cores.
    pub fn small() -> Self {
        Self {
            name: "small".into(),
            vocab_size: 768,
            hidden_size: 64,
            num_layers: 2,
            num_heads: 4,
            num_kv_heads: 2,
            intermediate_size: 192,
            context: 256,
            seq_len: 96,
            batch_size: 16,
            foundation_steps: 300,
            sft_steps: 150,
            foundation_lr: 3e-3,
            sft_lr: 2e-3,
            n_general: 1500,
            n_reasoning: 3000,
            n_sop: 1500,
            n_eval: 40,
        }
    }

    /// The default profile: about a million parameters, sized to forge in about 20
    /// minutes on 2 cores (training throughput, not disk, is the limit).
    pub fn full() -> Self {
        Self {
            name: "full".into(),
            vocab_size: 2048,
            hidden_size: 128,
            num_layers: 4,
            num_heads: 4,
            num_kv_heads: 2,
            intermediate_size: 384,
            context: 512,
            seq_len: 128,
            batch_size: 16,
            foundation_steps: 700,
            sft_steps: 200,
            foundation_lr: 3e-3,
            sft_lr: 1.5e-3,
            n_general: 5000,
            n_reasoning: 15000,
            n_sop: 6000,
            n_eval: 100,
        }
    }

    pub fn by_name(name: &str) -> Result<Self> {
        match name {
            "small" => Ok(Self::small()),
            "full" => Ok(Self::full()),
            other => Err(ExpertError::InvalidRequest(format!(
                "unknown forge profile {other:?} (small, full)"
            ))),
        }
    }

    fn model_config(&self, bos: u32, eos: u32) -> ModelConfig {
        ModelConfig {
            architecture: Architecture::Qwen2,
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_hidden_layers: self.num_layers,
            num_attention_heads: self.num_heads,
            num_key_value_heads: self.num_kv_heads,
            head_dim: self.hidden_size / self.num_heads,
            max_position_embeddings: self.context,
            rms_norm_eps: 1e-6,
            rope_theta: 10_000.0,
            tie_word_embeddings: true,
            qkv_bias: true,
            bos_token_id: Some(bos),
            eos_token_ids: vec![eos],
        }
    }
}

/// What a forge run measured, written to `forge.json` in each model directory.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainRecord {
    pub forge_version: u32,
    pub profile: ForgeProfile,
    pub seed: u64,
    pub steps: usize,
    pub parameters: usize,
    pub tokens_seen: usize,
    pub seconds: f64,
    pub first_loss: f32,
    pub final_loss: f32,
    /// Mean loss of every 50 steps.
    pub loss_curve: Vec<f32>,
}

/// Scores of one model on one eval set.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DomainScores {
    pub model: String,
    /// Reasoning: final-answer exact match.
    pub reasoning_accuracy: f64,
    /// SOP: token F1 against the reference procedure.
    pub sop_f1: f64,
    /// SOP: exact match of the whole procedure.
    pub sop_exact: f64,
    /// Mean negative log-likelihood per token of the reasoning references (teacher-forced).
    pub reasoning_nll: f64,
    /// Mean negative log-likelihood per token of the SOP references (teacher-forced).
    pub sop_nll: f64,
}

/// Formats an example as one chat-formatted training document.
pub fn chat_document(template: &ChatTemplate, ex: &Example) -> Result<String> {
    let mut text = template.render(&[ChatMessage::user(&ex.prompt)], true)?;
    text.push_str(&ex.answer);
    text.push_str(EOS);
    text.push('\n');
    Ok(text)
}

type ForgeTokenizer = TokenizerImpl<BPE, NormalizerWrapper, Sequence, ByteLevel, ByteLevel>;

/// Trains the byte-level BPE tokenizer on `texts` and writes `tokenizer.json` to `path`.
pub fn train_tokenizer(texts: &[String], vocab_size: usize, path: &Path) -> Result<()> {
    let terr = |e: tokenizers::Error| ExpertError::Tokenizer(e.to_string());
    let mut tok: ForgeTokenizer = TokenizerBuilder::new()
        .with_model(BPE::default())
        .with_normalizer(None)
        .with_pre_tokenizer(Some(Sequence::new(vec![
            PreTokenizerWrapper::Split(
                Split::new(
                    SplitPattern::Regex(PRETOKENIZE_PATTERN.into()),
                    SplitDelimiterBehavior::Isolated,
                    false,
                )
                .map_err(terr)?,
            ),
            PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, false, false)),
        ])))
        .with_post_processor(Some(ByteLevel::default().trim_offsets(false)))
        .with_decoder(Some(ByteLevel::default()))
        .build()
        .map_err(terr)?;
    let specials: Vec<AddedToken> = [END_OF_TEXT, BOS, EOS]
        .iter()
        .map(|t| AddedToken::from(*t, true))
        .collect();
    let mut trainer = BpeTrainerBuilder::new()
        .vocab_size(vocab_size)
        .min_frequency(2)
        .show_progress(false)
        .special_tokens(specials)
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build();
    tok.train(&mut trainer, texts.iter()).map_err(terr)?;
    tok.save(path, false).map_err(terr)?;
    Ok(())
}

/// Seeded normal(0, std) values.
fn normal(rng: &mut ChaCha8Rng, n: usize, std: f32) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let u1: f32 = rng.random_range(f32::EPSILON..1.0);
            let u2: f32 = rng.random_range(0.0..1.0);
            std * (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
        })
        .collect()
}

/// Overwrites every variable of `varmap` with values from `init(name, element count, rng)`,
/// visiting the variables in name order with one seeded ChaCha stream, so the result
/// depends only on the seed.
pub(crate) fn set_vars_seeded(
    varmap: &VarMap,
    seed: u64,
    mut init: impl FnMut(&str, &candle_core::Var, &mut ChaCha8Rng) -> Vec<f32>,
) -> Result<()> {
    let data = varmap
        .data()
        .lock()
        .map_err(|_| ExpertError::Training("variable map lock poisoned".into()))?;
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for name in names {
        let var = &data[name];
        let values = init(name, var, &mut rng);
        var.set(&Tensor::from_vec(
            values,
            var.shape().clone(),
            var.device(),
        )?)?;
    }
    Ok(())
}

/// Seeded initialisation of the decoder: norms 1, biases 0, weights N(0, 0.02)
/// (output projections scaled down by depth, as GPT-2 does).
fn init_weights(varmap: &VarMap, seed: u64, layers: usize) -> Result<()> {
    set_vars_seeded(varmap, seed, |name, var, rng| {
        let n = var.elem_count();
        if name.ends_with("norm.weight") {
            vec![1.0; n]
        } else if name.ends_with(".bias") {
            vec![0.0; n]
        } else if name.ends_with("o_proj.weight") || name.ends_with("down_proj.weight") {
            normal(rng, n, 0.02 / (2.0 * layers as f32).sqrt())
        } else {
            normal(rng, n, 0.02)
        }
    })
}

/// Trains `decoder` (whose variables are in `varmap`) on `stream` for `steps` steps.
#[allow(clippy::too_many_arguments)]
fn train_steps(
    decoder: &Decoder,
    varmap: &VarMap,
    stream: &[u32],
    profile: &ForgeProfile,
    steps: usize,
    lr: f64,
    seed: u64,
    label: &str,
) -> Result<TrainRecord> {
    let (b, t) = (profile.batch_size, profile.seq_len);
    if stream.len() <= t + 1 {
        return Err(ExpertError::Training(format!(
            "{label}: the corpus has {} tokens, fewer than one sequence",
            stream.len()
        )));
    }
    let device = decoder.device().clone();
    let mut opt = AdamW::new(
        varmap.all_vars(),
        ParamsAdamW {
            lr,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.01,
        },
    )?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let bar = ProgressBar::new(steps as u64).with_style(
        ProgressStyle::with_template(
            "{prefix:>12} {bar:40} {pos}/{len} steps {msg} [{elapsed_precise}<{eta_precise}]",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_prefix(label.to_string());
    let started = Instant::now();
    let warmup = (steps / 20).max(1);
    let mut curve = Vec::new();
    let (mut window_sum, mut window_n) = (0f32, 0);
    let (mut first_loss, mut last_loss) = (f32::NAN, f32::NAN);
    for step in 0..steps {
        let mut inputs = Vec::with_capacity(b * t);
        let mut targets = Vec::with_capacity(b * t);
        for _ in 0..b {
            let start = rng.random_range(0..stream.len() - t - 1);
            inputs.extend_from_slice(&stream[start..start + t]);
            targets.extend_from_slice(&stream[start + 1..start + t + 1]);
        }
        let inputs = Tensor::from_vec(inputs, (b, t), &device)?;
        let targets = Tensor::from_vec(targets, b * t, &device)?;
        let logits = decoder
            .forward(&inputs, None, false, false, NumPath::Differentiable)?
            .logits;
        let logits = logits.reshape((b * t, profile.vocab_size))?;
        let loss = candle_nn::loss::cross_entropy(&logits, &targets)?;
        // Linear warm-up, then cosine decay to 10 % of the peak.
        let lr_now = if step < warmup {
            lr * (step + 1) as f64 / warmup as f64
        } else {
            let p = (step - warmup) as f64 / (steps - warmup).max(1) as f64;
            lr * (0.1 + 0.9 * 0.5 * (1.0 + (std::f64::consts::PI * p).cos()))
        };
        opt.set_learning_rate(lr_now);
        opt.backward_step(&loss)?;
        let l = loss.to_scalar::<f32>()?;
        if !l.is_finite() {
            return Err(ExpertError::Training(format!(
                "{label}: loss became {l} at step {step}"
            )));
        }
        if step == 0 {
            first_loss = l;
        }
        last_loss = l;
        window_sum += l;
        window_n += 1;
        if window_n == 50 || step + 1 == steps {
            curve.push(window_sum / window_n as f32);
            window_sum = 0.0;
            window_n = 0;
        }
        bar.set_message(format!("loss {l:.3}"));
        bar.inc(1);
    }
    bar.finish_and_clear();
    let parameters = varmap.all_vars().iter().map(|v| v.elem_count()).sum();
    Ok(TrainRecord {
        forge_version: FORGE_VERSION,
        profile: profile.clone(),
        seed,
        steps,
        parameters,
        tokens_seen: steps * b * t,
        seconds: started.elapsed().as_secs_f64(),
        first_loss,
        final_loss: last_loss,
        loss_curve: curve,
    })
}

fn tokenize_stream(tok: &tokenizers::Tokenizer, docs: &[String], eot: u32) -> Result<Vec<u32>> {
    let mut out = Vec::new();
    for d in docs {
        let enc = tok
            .encode(d.as_str(), false)
            .map_err(|e| ExpertError::Tokenizer(e.to_string()))?;
        out.extend_from_slice(enc.get_ids());
        out.push(eot);
    }
    Ok(out)
}

pub(crate) fn write_json(path: &Path, value: &impl Serialize) -> Result<()> {
    let bytes =
        serde_json::to_vec_pretty(value).map_err(|e| ExpertError::Training(e.to_string()))?;
    std::fs::write(path, bytes).map_err(|e| ExpertError::io(path, e))
}

/// Writes everything of an HF model directory except the weights.
fn write_model_files(dir: &Path, config: &ModelConfig, tokenizer_json: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| ExpertError::io(dir, e))?;
    write_json(&dir.join("config.json"), &config.to_hf_json())?;
    std::fs::copy(tokenizer_json, dir.join("tokenizer.json"))
        .map_err(|e| ExpertError::io(dir, e))?;
    write_json(
        &dir.join("tokenizer_config.json"),
        &serde_json::json!({
            "tokenizer_class": "Qwen2Tokenizer",
            "chat_template": CHAT_TEMPLATE,
            "bos_token": null,
            "eos_token": EOS,
            "pad_token": END_OF_TEXT,
            "unk_token": null,
            "model_max_length": config.max_position_embeddings,
            "clean_up_tokenization_spaces": false,
        }),
    )?;
    write_json(
        &dir.join("generation_config.json"),
        &serde_json::json!({
            "eos_token_id": config.eos_token_ids,
            "bos_token_id": config.bos_token_id,
            "do_sample": false,
            "max_new_tokens": 128,
        }),
    )?;
    Ok(())
}

/// Moves a finished temporary directory into place.
fn commit_dir(tmp: &Path, dst: &Path) -> Result<()> {
    if dst.exists() {
        std::fs::remove_dir_all(dst).map_err(|e| ExpertError::io(dst, e))?;
    }
    std::fs::rename(tmp, dst).map_err(|e| ExpertError::io(dst, e))
}

/// A model directory is complete when its `forge.json` exists (written last).
fn is_complete(dir: &Path, profile: &ForgeProfile, seed: u64) -> bool {
    let Ok(bytes) = std::fs::read(dir.join("forge.json")) else {
        return false;
    };
    serde_json::from_slice::<TrainRecord>(&bytes)
        .is_ok_and(|r| r.forge_version == FORGE_VERSION && &r.profile == profile && r.seed == seed)
}

/// The forge's tokenizer at `path`, its end-of-text id and the profile's model config with
/// its special tokens.
fn tokenizer_and_config(
    path: &Path,
    p: &ForgeProfile,
) -> Result<(tokenizers::Tokenizer, u32, ModelConfig)> {
    let tokenizer = tokenizers::Tokenizer::from_file(path)
        .map_err(|e| ExpertError::model(path, e.to_string()))?;
    let id = |t: &str| {
        tokenizer
            .token_to_id(t)
            .ok_or_else(|| ExpertError::Tokenizer(format!("special token {t} missing")))
    };
    let (eot, bos, eos) = (id(END_OF_TEXT)?, id(BOS)?, id(EOS)?);
    Ok((tokenizer, eot, p.model_config(bos, eos)))
}

/// An SFT branch of the foundation: what every branch shares.
struct Branch<'a> {
    foundation: &'a Path,
    config: &'a ModelConfig,
    tokenizer: &'a tokenizers::Tokenizer,
    tokenizer_json: &'a Path,
    eot: u32,
}

impl Branch<'_> {
    /// Fine-tunes the foundation's weights on `docs` with the profile's SFT schedule and
    /// writes the model to `dir` (through a temporary directory, `forge.json` last).
    fn train(
        &self,
        docs: &[String],
        p: &ForgeProfile,
        seed: u64,
        name: &str,
        dir: &Path,
    ) -> Result<()> {
        let stream = tokenize_stream(self.tokenizer, docs, self.eot)?;
        let mut varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let decoder = Decoder::new(self.config, vb)?;
        varmap.load(self.foundation.join("model.safetensors"))?;
        let record = train_steps(
            &decoder,
            &varmap,
            &stream,
            p,
            p.sft_steps,
            p.sft_lr,
            seed,
            name,
        )?;
        let parent = dir.parent().unwrap_or_else(|| Path::new("."));
        let tmp = parent.join(format!(".{name}.tmp"));
        write_model_files(&tmp, self.config, self.tokenizer_json)?;
        varmap.save(tmp.join("model.safetensors"))?;
        write_json(&tmp.join("forge.json"), &record)?;
        commit_dir(&tmp, dir)
    }
}

/// Options of [`forge`].
#[derive(Debug, Clone)]
pub struct ForgeOptions {
    pub out: PathBuf,
    pub profile: ForgeProfile,
    pub seed: u64,
    /// Rebuild even when complete models exist.
    pub force: bool,
    /// Evaluate both models on both eval sets at the end.
    pub evaluate: bool,
}

/// What [`forge`] produced.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ForgeReport {
    pub foundation: PathBuf,
    pub sft: PathBuf,
    pub foundation_record: TrainRecord,
    pub sft_record: TrainRecord,
    pub scores: Vec<DomainScores>,
}

fn read_record(dir: &Path) -> Result<TrainRecord> {
    let p = dir.join("forge.json");
    let bytes = std::fs::read(&p).map_err(|e| ExpertError::io(&p, e))?;
    serde_json::from_slice(&bytes).map_err(|e| ExpertError::model(&p, e.to_string()))
}

/// Builds (or reuses) `out/foundation`, `out/sft-sop` and `out/eval/`.
pub fn forge(opts: &ForgeOptions) -> Result<ForgeReport> {
    let p = &opts.profile;
    let seed = opts.seed;
    let out = &opts.out;
    std::fs::create_dir_all(out).map_err(|e| ExpertError::io(out, e))?;
    let foundation_dir = out.join("foundation");
    let sft_dir = out.join("sft-sop");
    let template = ChatTemplate::new(CHAT_TEMPLATE);

    // Held-out eval sets: disjoint from every training set by construction (see corpus).
    let eval_dir = out.join("eval");
    std::fs::create_dir_all(&eval_dir).map_err(|e| ExpertError::io(&eval_dir, e))?;
    let reasoning_eval = corpus::reasoning_eval(seed, p.n_eval);
    let sop_eval = corpus::sop_eval(seed, p.n_eval);
    for (name, set, label) in [("reasoning", &reasoning_eval, 0), ("sop", &sop_eval, 1)] {
        let mut text = String::new();
        for ex in set {
            let line =
                serde_json::json!({"prompt": ex.prompt, "reference": ex.answer, "label": label});
            text.push_str(&line.to_string());
            text.push('\n');
        }
        let path = eval_dir.join(format!("{name}.jsonl"));
        std::fs::write(&path, text).map_err(|e| ExpertError::io(&path, e))?;
    }

    let device = Device::Cpu;
    let need_foundation = opts.force || !is_complete(&foundation_dir, p, seed);
    // The SFT branch trains with seed + 1 (recorded as such in its forge.json).
    let need_sft = need_foundation || opts.force || !is_complete(&sft_dir, p, seed + 1);

    if need_foundation || need_sft {
        let general = corpus::general_text(seed, p.n_general);
        let reasoning: Vec<String> = corpus::reasoning_train(seed, p.n_reasoning)
            .iter()
            .map(|e| chat_document(&template, e))
            .collect::<Result<_>>()?;
        let sop: Vec<String> = corpus::sop_train(seed, p.n_sop)
            .iter()
            .map(|e| chat_document(&template, e))
            .collect::<Result<_>>()?;

        // One tokenizer for both models, trained on all training text (never the eval sets).
        let tok_path = out.join(".tokenizer.json");
        let mut all: Vec<String> = general.clone();
        all.extend(reasoning.iter().cloned());
        all.extend(sop.iter().cloned());
        train_tokenizer(&all, p.vocab_size, &tok_path)?;
        let (tokenizer, eot, config) = tokenizer_and_config(&tok_path, p)?;

        if need_foundation {
            let mut docs = general;
            docs.extend(reasoning);
            // Interleave deterministically so batches mix both kinds of text.
            let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0xf0);
            for i in (1..docs.len()).rev() {
                let j = rng.random_range(0..=i);
                docs.swap(i, j);
            }
            let stream = tokenize_stream(&tokenizer, &docs, eot)?;
            let varmap = VarMap::new();
            let vb = VarBuilder::from_varmap(&varmap, DType::F32, &device);
            let decoder = Decoder::new(&config, vb)?;
            init_weights(&varmap, seed, p.num_layers)?;
            let record = train_steps(
                &decoder,
                &varmap,
                &stream,
                p,
                p.foundation_steps,
                p.foundation_lr,
                seed,
                "foundation",
            )?;
            let tmp = out.join(".foundation.tmp");
            write_model_files(&tmp, &config, &tok_path)?;
            varmap.save(tmp.join("model.safetensors"))?;
            write_json(&tmp.join("forge.json"), &record)?;
            commit_dir(&tmp, &foundation_dir)?;
        }
        if need_sft {
            let branch = Branch {
                foundation: &foundation_dir,
                config: &config,
                tokenizer: &tokenizer,
                tokenizer_json: &tok_path,
                eot,
            };
            branch.train(&sop, p, seed + 1, "sft-sop", &sft_dir)?;
        }
        let _ = std::fs::remove_file(&tok_path);
    }

    let mut scores = Vec::new();
    if opts.evaluate {
        for dir in [&foundation_dir, &sft_dir] {
            let model = load_model(dir, DType::F32, &device)?;
            scores.push(score_domains(&model, &reasoning_eval, &sop_eval)?);
        }
    }
    Ok(ForgeReport {
        foundation_record: read_record(&foundation_dir)?,
        sft_record: read_record(&sft_dir)?,
        foundation: foundation_dir,
        sft: sft_dir,
        scores,
    })
}

/// Greedy answer of `model` to one prompt, through its chat template.
pub fn answer(model: &LoadedModel, prompt: &str, max_tokens: usize) -> Result<String> {
    let ids = model.user_prompt_ids(prompt)?;
    let params = SamplingParams {
        max_tokens,
        ..SamplingParams::default()
    };
    Ok(generate(model, &ids, &params, |_| true)?.text)
}

/// Sum of the negative log-likelihoods of the reference's tokens (and the end-of-turn token)
/// after the chat-formatted prompt, and their count.
pub fn reference_nll(model: &LoadedModel, prompt: &str, reference: &str) -> Result<(f64, usize)> {
    let prompt = model.user_prompt_ids(prompt)?;
    let reference = model.answer_ids(reference)?;
    let lp = crate::fusion::score_continuations(
        &crate::fusion::Fusion::Single(model),
        &prompt,
        std::slice::from_ref(&reference),
    )?;
    let total = -lp[0].iter().map(|&x| f64::from(x)).sum::<f64>();
    Ok((total, reference.len()))
}

fn mean_nll(model: &LoadedModel, set: &[Example]) -> Result<f64> {
    let (mut sum, mut n) = (0.0, 0);
    for ex in set {
        let (s, k) = reference_nll(model, &ex.prompt, &ex.answer)?;
        sum += s;
        n += k;
    }
    Ok(sum / n.max(1) as f64)
}

/// Scores a model on both eval sets.
pub fn score_domains(
    model: &LoadedModel,
    reasoning: &[Example],
    sop: &[Example],
) -> Result<DomainScores> {
    let reasoning_nll = mean_nll(model, reasoning)?;
    let sop_nll = mean_nll(model, sop)?;
    let mut correct = 0.0;
    for ex in reasoning {
        debug_assert_eq!(ex.domain, Domain::Reasoning);
        correct += answer_match(&answer(model, &ex.prompt, 48)?, &ex.answer);
    }
    let (mut f1, mut exact) = (0.0, 0.0);
    for ex in sop {
        let out = answer(model, &ex.prompt, 128)?;
        f1 += token_f1(&out, &ex.answer);
        exact += f64::from(u8::from(out.trim() == ex.answer.trim()));
    }
    let n_r = reasoning.len().max(1) as f64;
    let n_s = sop.len().max(1) as f64;
    Ok(DomainScores {
        model: model.name.clone(),
        reasoning_accuracy: correct / n_r,
        sop_f1: f1 / n_s,
        sop_exact: exact / n_s,
        reasoning_nll,
        sop_nll,
    })
}

// ---------------------------------------------------------------------------------------------
// Three or more experts: one SFT branch per SOP area
// ---------------------------------------------------------------------------------------------

/// Category names of the multi-expert configuration, in label order.
pub fn area_categories() -> Vec<String> {
    std::iter::once("reasoning".to_string())
        .chain(corpus::SopArea::ALL.iter().map(|a| a.name().to_string()))
        .collect()
}

/// What [`forge_areas`] produced.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AreasReport {
    /// The foundation / sft-sop pair the areas branch from.
    pub pair: ForgeReport,
    /// `(model name, directory, training record)` of each area expert.
    pub experts: Vec<(String, PathBuf, TrainRecord)>,
    /// Four-category eval file (`{"prompt", "reference", "label"}`).
    pub eval_file: PathBuf,
    /// Classifier data (`{"query", "label"}`): `train.jsonl` and `val.jsonl`.
    pub classifier_dir: PathBuf,
    /// Per model, per category: quality of greedy answers and reference NLL.
    pub scores: Vec<(String, Vec<CategoryScore>)>,
}

/// One model's scores on one category of the four-category eval set.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CategoryScore {
    pub category: String,
    /// Mean [`crate::quality::score`] of greedy answers.
    pub quality: f64,
    /// Mean negative log-likelihood per reference token.
    pub nll: f64,
}

/// The multi-expert forge: the foundation / sft-sop pair (reused when complete), then three
/// SFT experts branched from `foundation`, one per [`corpus::SopArea`]
/// (`sft-customer-service`, `sft-sales`, `sft-tech-support`), each fine-tuned on its area's
/// procedures only with the profile's SFT schedule. Also writes the four-category held-out
/// eval set `eval/multi.jsonl` (reasoning, customer_service, sales, tech_support) and the
/// four-class classifier's training data `classifier-multi/{train,val}.jsonl`, drawn from
/// the training splits only. Deterministic and resumable like [`forge`].
pub fn forge_areas(opts: &ForgeOptions) -> Result<AreasReport> {
    let pair = forge(&ForgeOptions {
        evaluate: false,
        ..opts.clone()
    })?;
    let p = &opts.profile;
    let seed = opts.seed;
    let out = &opts.out;
    let template = ChatTemplate::new(CHAT_TEMPLATE);
    let categories = area_categories();

    // Four-category eval set: held-out items only.
    let per_category = (p.n_eval / 2).max(1);
    let mut eval_sets: Vec<Vec<Example>> = vec![corpus::reasoning_eval(seed, per_category)];
    for area in corpus::SopArea::ALL {
        eval_sets.push(corpus::sop_eval_area(seed, per_category, area));
    }
    let eval_file = out.join("eval").join("multi.jsonl");
    let mut text = String::new();
    for (label, set) in eval_sets.iter().enumerate() {
        for ex in set {
            let line =
                serde_json::json!({"prompt": ex.prompt, "reference": ex.answer, "label": label});
            text.push_str(&line.to_string());
            text.push('\n');
        }
    }
    std::fs::write(&eval_file, text).map_err(|e| ExpertError::io(&eval_file, e))?;

    // Classifier data from the training splits (a different draw than the experts' data).
    let classifier_dir = out.join("classifier-multi");
    std::fs::create_dir_all(&classifier_dir).map_err(|e| ExpertError::io(&classifier_dir, e))?;
    for (file, draw_seed, n) in [("train.jsonl", seed + 7, 600), ("val.jsonl", seed + 8, 120)] {
        let mut sets = vec![corpus::reasoning_train(draw_seed, n)];
        for area in corpus::SopArea::ALL {
            sets.push(corpus::sop_train_area(draw_seed, n, area));
        }
        let mut text = String::new();
        // Interleave categories so a reader of the first lines sees all four.
        let longest = sets.iter().map(Vec::len).max().unwrap_or(0);
        for i in 0..longest {
            for (label, set) in sets.iter().enumerate() {
                if let Some(ex) = set.get(i) {
                    let line = serde_json::json!({"query": ex.prompt, "label": label});
                    text.push_str(&line.to_string());
                    text.push('\n');
                }
            }
        }
        let path = classifier_dir.join(file);
        std::fs::write(&path, text).map_err(|e| ExpertError::io(&path, e))?;
    }

    let device = Device::Cpu;
    let tok_path = pair.foundation.join("tokenizer.json");
    let (tokenizer, eot, config) = tokenizer_and_config(&tok_path, p)?;
    let mut experts = Vec::new();
    for (k, area) in corpus::SopArea::ALL.into_iter().enumerate() {
        let name = area.model_name();
        let dir = out.join(&name);
        let branch_seed = seed + 2 + k as u64;
        if opts.force || !is_complete(&dir, p, branch_seed) {
            let docs: Vec<String> = corpus::sop_train_area(seed, p.n_sop, area)
                .iter()
                .map(|e| chat_document(&template, e))
                .collect::<Result<_>>()?;
            let branch = Branch {
                foundation: &pair.foundation,
                config: &config,
                tokenizer: &tokenizer,
                tokenizer_json: &tok_path,
                eot,
            };
            branch.train(&docs, p, branch_seed, &name, &dir)?;
        }
        experts.push((name, dir.clone(), read_record(&dir)?));
    }

    let mut scores = Vec::new();
    if opts.evaluate {
        let n = (p.n_eval / 5).max(2);
        let dirs = [pair.foundation.clone(), pair.sft.clone()]
            .into_iter()
            .chain(experts.iter().map(|(_, d, _)| d.clone()));
        for dir in dirs {
            let model = load_model(&dir, DType::F32, &device)?;
            let mut row = Vec::new();
            for (category, set) in categories.iter().zip(&eval_sets) {
                let set = &set[..n.min(set.len())];
                let mut quality = 0.0;
                for ex in set {
                    quality += crate::quality::score(&answer(&model, &ex.prompt, 128)?, &ex.answer);
                }
                row.push(CategoryScore {
                    category: category.clone(),
                    quality: quality / set.len().max(1) as f64,
                    nll: mean_nll(&model, set)?,
                });
            }
            scores.push((model.name.clone(), row));
        }
    }
    Ok(AreasReport {
        pair,
        experts,
        eval_file,
        classifier_dir,
        scores,
    })
}

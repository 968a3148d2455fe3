//! Training of the BTM routers with the experts frozen, on mixed-domain text (reasoning +
//! SOP), by the mixture's next-token likelihood:
//!
//! - token level: the router MLP reads the experts' final hidden states and its weights
//!   `w` minimise `-log Σ_e w_e · p_e(next token)`;
//! - layer level: the per-layer coefficients minimise the cross-entropy of the layer-mixed
//!   forward (gradients flow through the frozen experts' layers into the coefficients).
//!
//! Batches come from a seeded stream; the same seed gives the same router.

use std::path::Path;
use std::time::Instant;

use candle_core::{D, DType, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarMap};
use indicatif::{ProgressBar, ProgressStyle};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::chat::ChatTemplate;
use crate::corpus;
use crate::error::{ExpertError, Result};
use crate::forge::{CHAT_TEMPLATE, chat_document, set_vars_seeded, write_json};
use crate::fusion::{
    LayerMixer, RouterConfig, TokenRouter, mix_streams, mixed_head, new_router_vars,
};
use crate::loader::LoadedModel;
use crate::model::Path as NumPath;

/// Options of a router training run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RouterTrainOptions {
    pub steps: usize,
    pub layer_steps: usize,
    pub batch_size: usize,
    pub seq_len: usize,
    pub lr: f64,
    pub router_hidden: usize,
    pub seed: u64,
    pub n_docs: usize,
}

impl Default for RouterTrainOptions {
    fn default() -> Self {
        Self {
            steps: 200,
            layer_steps: 60,
            batch_size: 8,
            seq_len: 96,
            lr: 3e-3,
            router_hidden: 64,
            seed: 1234,
            n_docs: 3000,
        }
    }
}

/// What a run measured (`loss.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RouterRecord {
    pub kind: String,
    pub options: RouterTrainOptions,
    pub losses: Vec<f32>,
    pub seconds: f64,
    /// Mean mixing weight of each expert on reasoning-only and SOP-only held-out batches
    /// (token router) or the learned per-layer weights (layer mixer).
    pub summary: serde_json::Value,
}

/// A progress bar of `n` steps labelled `label` (training loops of this crate).
pub(crate) fn bar(n: usize, label: &str) -> ProgressBar {
    let b = ProgressBar::new(n as u64).with_style(
        ProgressStyle::with_template(
            "{prefix:>10} {bar:40} {pos}/{len} {msg} [{elapsed_precise}<{eta_precise}]",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    b.set_prefix(label.to_string());
    b
}

/// Mixed-domain training text as one token stream.
fn mixed_stream(model: &LoadedModel, n: usize, seed: u64) -> Result<Vec<u32>> {
    let template = ChatTemplate::new(CHAT_TEMPLATE);
    let mut docs: Vec<String> = corpus::reasoning_train(seed, n / 2)
        .iter()
        .chain(corpus::sop_train(seed, n / 2).iter())
        .map(|e| chat_document(&template, e))
        .collect::<Result<_>>()?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for i in (1..docs.len()).rev() {
        let j = rng.random_range(0..=i);
        docs.swap(i, j);
    }
    let mut out = Vec::new();
    for d in &docs {
        out.extend(model.tokenizer.encode(d)?);
    }
    Ok(out)
}

fn batch(
    stream: &[u32],
    b: usize,
    t: usize,
    rng: &mut ChaCha8Rng,
    device: &candle_core::Device,
) -> Result<(Tensor, Tensor)> {
    if stream.len() <= t + 1 {
        return Err(ExpertError::Training(
            "the training stream is shorter than one sequence".into(),
        ));
    }
    let mut x = Vec::with_capacity(b * t);
    let mut y = Vec::with_capacity(b * t);
    for _ in 0..b {
        let s = rng.random_range(0..stream.len() - t - 1);
        x.extend_from_slice(&stream[s..s + t]);
        y.extend_from_slice(&stream[s + 1..s + t + 1]);
    }
    Ok((
        Tensor::from_vec(x, (b, t), device)?,
        Tensor::from_vec(y, (b, t), device)?,
    ))
}

/// Each expert's final normed hidden states `[n, h]` and next-token log-probabilities
/// `[n, vocab]` on `x` (`[b, t]`, `n = b·t`), detached (the experts stay frozen).
pub(crate) fn expert_outputs(
    models: &[&LoadedModel],
    x: &Tensor,
) -> Result<(Vec<Tensor>, Vec<Tensor>)> {
    let (b, t) = x.dims2()?;
    let mut hidden = Vec::new();
    let mut logp = Vec::new();
    for m in models {
        let out = m.decoder.forward(x, None, false, true, NumPath::Fused)?;
        let h = out
            .hidden_states
            .and_then(|mut h| h.pop())
            .ok_or_else(|| ExpertError::Training("no hidden states".into()))?;
        hidden.push(h.reshape((b * t, ()))?.to_dtype(DType::F32)?.detach());
        let logits = out.logits.reshape((b * t, ()))?.to_dtype(DType::F32)?;
        logp.push(candle_nn::ops::log_softmax(&logits, D::Minus1)?.detach());
    }
    Ok((hidden, logp))
}

/// Each expert's final hidden states `[n, h]` and log-probability of the targets `[n, 1]`.
fn expert_features(
    models: &[&LoadedModel],
    x: &Tensor,
    y: &Tensor,
) -> Result<(Vec<Tensor>, Vec<Tensor>)> {
    let targets = y.reshape((y.elem_count(), 1))?;
    let (hidden, logp) = expert_outputs(models, x)?;
    let logp = logp
        .iter()
        .map(|lp| Ok(lp.gather(&targets, 1)?))
        .collect::<Result<_>>()?;
    Ok((hidden, logp))
}

/// Trains the token-level router and writes `router.json`, `router.safetensors`, `loss.json`.
pub fn train_token_router(
    models: &[&LoadedModel],
    names: &[String],
    opts: &RouterTrainOptions,
    out: &Path,
) -> Result<RouterRecord> {
    let device = models[0].decoder.device().clone();
    let config = RouterConfig {
        kind: "btm_token".into(),
        experts: names.to_vec(),
        hidden_size: models[0].decoder.config().hidden_size,
        router_hidden: opts.router_hidden,
    };
    let varmap = VarMap::new();
    let router = new_router_vars(&config, &varmap, &device)?;
    seed_vars(&varmap, opts.seed)?;
    let mut opt = AdamW::new(
        varmap.all_vars(),
        ParamsAdamW {
            lr: opts.lr,
            weight_decay: 0.0,
            ..ParamsAdamW::default()
        },
    )?;
    let stream = mixed_stream(models[0], opts.n_docs, opts.seed)?;
    let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);
    let started = Instant::now();
    let pb = bar(opts.steps, "btm_token");
    let mut losses = Vec::new();
    for _ in 0..opts.steps {
        let (x, y) = batch(&stream, opts.batch_size, opts.seq_len, &mut rng, &device)?;
        let (hidden, logp) = expert_features(models, &x, &y)?;
        let w = router.weights(&hidden)?; // [n, E]
        let logp = Tensor::cat(&logp, 1)?; // [n, E]
        let mixed = (w.log()? + logp)?; // log(w_e p_e)
        let max = mixed.max_keepdim(1)?.detach();
        let lse = (mixed.broadcast_sub(&max)?.exp()?.sum_keepdim(1)?.log()? + max)?;
        let loss = lse.neg()?.mean_all()?;
        opt.backward_step(&loss)?;
        let l = loss.to_scalar::<f32>()?;
        losses.push(l);
        pb.set_message(format!("loss {l:.3}"));
        pb.inc(1);
    }
    pb.finish_and_clear();

    // Where does the router send each domain? Mean weights on held-out prompts of each.
    let template = ChatTemplate::new(CHAT_TEMPLATE);
    let mut summary = serde_json::Map::new();
    for (domain, set) in [
        ("reasoning", corpus::reasoning_eval(opts.seed, 20)),
        ("sop", corpus::sop_eval(opts.seed, 20)),
    ] {
        let mut acc = vec![0f32; names.len()];
        let mut n = 0usize;
        for ex in &set {
            let ids = models[0].tokenizer.encode(&chat_document(&template, ex)?)?;
            let x = Tensor::new(ids.as_slice(), &device)?.unsqueeze(0)?;
            let y = x.clone();
            let (hidden, _) = expert_features(models, &x, &y)?;
            let w: Vec<Vec<f32>> = router.weights(&hidden)?.to_vec2()?;
            for row in &w {
                for (a, v) in acc.iter_mut().zip(row) {
                    *a += v;
                }
            }
            n += w.len();
        }
        let mean: Vec<f32> = acc.iter().map(|a| a / n.max(1) as f32).collect();
        summary.insert(domain.into(), serde_json::json!(mean));
    }
    std::fs::create_dir_all(out).map_err(|e| ExpertError::io(out, e))?;
    write_json(&out.join("router.json"), &config)?;
    varmap.save(out.join("router.safetensors"))?;
    let record = RouterRecord {
        kind: "btm_token".into(),
        options: opts.clone(),
        losses,
        seconds: started.elapsed().as_secs_f64(),
        summary: serde_json::Value::Object(summary),
    };
    write_json(&out.join("loss.json"), &record)?;
    Ok(record)
}

/// Trains the layer-level coefficients and writes `mixer.json`, `mixer.safetensors`, `loss.json`.
pub fn train_layer_mixer(
    models: &[&LoadedModel],
    names: &[String],
    opts: &RouterTrainOptions,
    out: &Path,
) -> Result<RouterRecord> {
    let device = models[0].decoder.device().clone();
    let layers = models[0].decoder.config().num_hidden_layers;
    if models.iter().any(|m| {
        m.decoder.config().num_hidden_layers != layers
            || m.decoder.config().hidden_size != models[0].decoder.config().hidden_size
    }) {
        return Err(ExpertError::Training(
            "btm_layer needs same-shaped experts".into(),
        ));
    }
    let coeffs = Var::zeros((layers + 1, models.len()), DType::F32, &device)?;
    let mut opt = AdamW::new(
        vec![coeffs.clone()],
        ParamsAdamW {
            lr: opts.lr * 10.0,
            weight_decay: 0.0,
            ..ParamsAdamW::default()
        },
    )?;
    let stream = mixed_stream(models[0], opts.n_docs, opts.seed + 1)?;
    let mut rng = ChaCha8Rng::seed_from_u64(opts.seed + 1);
    let started = Instant::now();
    let pb = bar(opts.layer_steps, "btm_layer");
    let mut losses = Vec::new();
    let vocab = models[0].decoder.config().vocab_size;
    for _ in 0..opts.layer_steps {
        let (x, y) = batch(
            &stream,
            opts.batch_size / 2,
            opts.seq_len,
            &mut rng,
            &device,
        )?;
        let w = candle_nn::ops::softmax(coeffs.as_tensor(), D::Minus1)?; // [L+1, E]
        let mix = |streams: &[Tensor], row: usize| -> Result<Tensor> {
            let mut acc: Option<Tensor> = None;
            for (e, s) in streams.iter().enumerate() {
                let we = w.narrow(0, row, 1)?.narrow(1, e, 1)?.reshape(())?;
                let term = s.broadcast_mul(&we)?;
                acc = Some(match acc {
                    None => term,
                    Some(a) => (a + term)?,
                });
            }
            acc.ok_or_else(|| ExpertError::Training("no experts".into()))
        };
        let embeds: Vec<Tensor> = models
            .iter()
            .map(|m| m.decoder.embed(&x))
            .collect::<Result<_>>()?;
        let mut h = mix(&embeds, 0)?;
        for l in 0..layers {
            let outs: Vec<Tensor> = models
                .iter()
                .map(|m| m.decoder.layer(l, &h, None, 0, NumPath::Differentiable))
                .collect::<Result<_>>()?;
            h = mix(&outs, l + 1)?;
        }
        // Every expert's head reads the mixed stream; logits mixed with the last row.
        let mut logits: Option<Tensor> = None;
        for (e, m) in models.iter().enumerate() {
            let we = w.narrow(0, layers, 1)?.narrow(1, e, 1)?.reshape(())?;
            let term = m
                .decoder
                .head(&h, NumPath::Differentiable)?
                .broadcast_mul(&we)?;
            logits = Some(match logits {
                None => term,
                Some(a) => (a + term)?,
            });
        }
        let logits = logits.ok_or_else(|| ExpertError::Training("no experts".into()))?;
        let (b, t) = x.dims2()?;
        let loss =
            candle_nn::loss::cross_entropy(&logits.reshape((b * t, vocab))?, &y.reshape(b * t)?)?;
        opt.backward_step(&loss)?;
        let l = loss.to_scalar::<f32>()?;
        losses.push(l);
        pb.set_message(format!("loss {l:.3}"));
        pb.inc(1);
    }
    pb.finish_and_clear();
    let weights: Vec<Vec<f32>> =
        candle_nn::ops::softmax(coeffs.as_tensor(), D::Minus1)?.to_vec2()?;
    std::fs::create_dir_all(out).map_err(|e| ExpertError::io(out, e))?;
    let config = RouterConfig {
        kind: "btm_layer".into(),
        experts: names.to_vec(),
        hidden_size: models[0].decoder.config().hidden_size,
        router_hidden: 0,
    };
    write_json(&out.join("mixer.json"), &config)?;
    candle_core::safetensors::save(
        &std::collections::HashMap::from([("logits".to_string(), coeffs.as_tensor().clone())]),
        out.join("mixer.safetensors"),
    )?;
    let record = RouterRecord {
        kind: "btm_layer".into(),
        options: opts.clone(),
        losses,
        seconds: started.elapsed().as_secs_f64(),
        summary: serde_json::json!({ "layer_weights": weights }),
    };
    write_json(&out.join("loss.json"), &record)?;
    Ok(record)
}

/// Seeded uniform(±1/√fan_in) weights and zero biases for the router.
fn seed_vars(varmap: &VarMap, seed: u64) -> Result<()> {
    set_vars_seeded(varmap, seed, |name, var, rng| {
        let n = var.elem_count();
        if name.ends_with("bias") {
            vec![0.0; n]
        } else {
            let fan_in = var.dims().last().copied().unwrap_or(1) as f32;
            let bound = 1.0 / fan_in.sqrt();
            (0..n).map(|_| rng.random_range(-bound..bound)).collect()
        }
    })
}

/// Mean negative log-likelihood per token of held-out chat documents of each domain
/// (`reasoning`, `sop`, and `mixed` = both), teacher-forced, for each expert alone, their
/// equal-weight ensemble, the token router's mixture and the layer-mixed model: the
/// mixture likelihood the routers are trained for, measured on text no training saw.
/// `others` (e.g. a distilled model) are scored alone beside them.
pub fn heldout_nll(
    models: &[&LoadedModel],
    names: &[String],
    router: &TokenRouter,
    mixer: &LayerMixer,
    others: &[(&str, &LoadedModel)],
    seed: u64,
    n_docs: usize,
) -> Result<serde_json::Value> {
    let device = models[0].decoder.device().clone();
    let template = ChatTemplate::new(CHAT_TEMPLATE);
    let e = models.len();
    let mut table = serde_json::Map::new();
    let mut mixed: Vec<f64> = Vec::new();
    let mut mixed_n = 0usize;
    for (domain, set) in [
        ("reasoning", corpus::reasoning_eval(seed, n_docs)),
        ("sop", corpus::sop_eval(seed, n_docs)),
    ] {
        // Sums of -log p over target tokens: experts…, ensemble, btm_token, btm_layer,
        // others….
        let mut sums = vec![0f64; e + 3 + others.len()];
        let mut n = 0usize;
        for ex in &set {
            let ids = models[0].tokenizer.encode(&chat_document(&template, ex)?)?;
            if ids.len() < 2 {
                continue;
            }
            let x = Tensor::new(&ids[..ids.len() - 1], &device)?.unsqueeze(0)?;
            let y = Tensor::new(&ids[1..], &device)?.unsqueeze(0)?;
            let (hidden, logp) = expert_features(models, &x, &y)?;
            let logp = Tensor::cat(&logp, 1)?; // [t, E]
            let t = logp.dim(0)?;
            let lse = |m: &Tensor| -> Result<Tensor> {
                let max = m.max_keepdim(1)?;
                Ok((m.broadcast_sub(&max)?.exp()?.sum_keepdim(1)?.log()? + max)?)
            };
            for (i, s) in sums.iter_mut().take(e).enumerate() {
                *s -= f64::from(logp.narrow(1, i, 1)?.sum_all()?.to_scalar::<f32>()?);
            }
            let ens = (lse(&logp)? - (e as f64).ln())?;
            sums[e] -= f64::from(ens.sum_all()?.to_scalar::<f32>()?);
            let w = router.weights(&hidden)?;
            let tok = lse(&(w.log()? + &logp)?)?;
            sums[e + 1] -= f64::from(tok.sum_all()?.to_scalar::<f32>()?);
            let weights: Vec<Vec<f32>> = mixer.weights()?.to_vec2()?;
            let embeds: Vec<Tensor> = models
                .iter()
                .map(|m| m.decoder.embed(&x))
                .collect::<Result<_>>()?;
            let mut h = mix_streams(&embeds, &weights[0])?;
            for l in 0..models[0].decoder.config().num_hidden_layers {
                let outs: Vec<Tensor> = models
                    .iter()
                    .map(|m| m.decoder.layer(l, &h, None, 0, NumPath::Fused))
                    .collect::<Result<_>>()?;
                h = mix_streams(&outs, &weights[l + 1])?;
            }
            let logits =
                mixed_head(models, &h, &weights[weights.len() - 1], NumPath::Fused)?.squeeze(0)?;
            let lp = candle_nn::ops::log_softmax(&logits.to_dtype(DType::F32)?, D::Minus1)?
                .gather(&y.squeeze(0)?.unsqueeze(1)?, 1)?;
            sums[e + 2] -= f64::from(lp.sum_all()?.to_scalar::<f32>()?);
            for (k, (_, m)) in others.iter().enumerate() {
                let logits = m
                    .decoder
                    .forward(&x, None, false, false, NumPath::Fused)?
                    .logits
                    .squeeze(0)?;
                let lp = candle_nn::ops::log_softmax(&logits.to_dtype(DType::F32)?, D::Minus1)?
                    .gather(&y.squeeze(0)?.unsqueeze(1)?, 1)?;
                sums[e + 3 + k] -= f64::from(lp.sum_all()?.to_scalar::<f32>()?);
            }
            n += t;
        }
        if mixed.is_empty() {
            mixed = vec![0.0; sums.len()];
        }
        for (m, s) in mixed.iter_mut().zip(&sums) {
            *m += s;
        }
        mixed_n += n;
        table.insert(domain.into(), nll_row(names, others, &sums, n));
    }
    table.insert("mixed".into(), nll_row(names, others, &mixed, mixed_n));
    Ok(serde_json::Value::Object(table))
}

fn nll_row(
    names: &[String],
    others: &[(&str, &LoadedModel)],
    sums: &[f64],
    n: usize,
) -> serde_json::Value {
    let mut row = serde_json::Map::new();
    let keys = names
        .iter()
        .map(String::as_str)
        .chain(["ensemble", "btm_token", "btm_layer"])
        .chain(others.iter().map(|(k, _)| *k));
    for (k, s) in keys.zip(sums) {
        row.insert(k.into(), serde_json::json!(s / n.max(1) as f64));
    }
    serde_json::Value::Object(row)
}

/// Options of a deferral-head run ([`train_deferral_head`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeferTrainOptions {
    /// Full-batch Adam steps on the collected positions.
    pub steps: usize,
    pub lr: f64,
    pub seed: u64,
    /// Reasoning + SOP training documents (half each).
    pub n_docs: usize,
    /// General questions the first expert answers itself ([`corpus::general_questions`]).
    pub n_general: usize,
    /// Tokens of each self-generated answer at most.
    pub answer_tokens: usize,
    /// Share of each domain's documents held out for the summary.
    pub heldout_share: f64,
}

impl Default for DeferTrainOptions {
    fn default() -> Self {
        Self {
            steps: 300,
            lr: 1e-2,
            seed: 1234,
            n_docs: 400,
            n_general: 120,
            answer_tokens: 48,
            heldout_share: 0.2,
        }
    }
}

/// What a deferral-head run measured (`loss.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeferRecord {
    pub kind: String,
    pub options: DeferTrainOptions,
    pub losses: Vec<f32>,
    pub seconds: f64,
    /// Per held-out domain: positions, share where deferring helps, the
    /// head's accuracy on that, and its deferral rate at η = 0.5.
    pub summary: serde_json::Value,
}

/// One chat document for the deferral head: its tokens, where its answer starts, and its
/// domain.
struct DeferDoc {
    ids: Vec<u32>,
    answer_start: usize,
    domain: corpus::Domain,
}

/// At each position of a `[n, vocab]` log-probability matrix: whether its argmax is the
/// target, and the target's log-probability.
fn position_stats(logp: &Tensor, targets: &[u32]) -> Result<Vec<(bool, f32)>> {
    let device = logp.device();
    let ids = Tensor::new(targets, device)?.unsqueeze(1)?;
    let of_target: Vec<f32> = logp.gather(&ids, 1)?.flatten_all()?.to_vec1()?;
    let argmax: Vec<u32> = logp.argmax(D::Minus1)?.to_vec1()?;
    Ok(targets
        .iter()
        .zip(argmax)
        .zip(of_target)
        .map(|((t, a), lp)| (a == *t, lp))
        .collect())
}

/// Whether a position should defer to the second expert, from (argmax is the target,
/// target log-probability) of each expert: never where the first expert's greedy pick is
/// right (deferring there costs and can only change a right token), always where only the
/// second's is, and where both are wrong, when the second gives the target more
/// probability. Labelling "the second is likelier" alone defers about as often on the
/// first expert's own answers as on the second's domain, since a fine-tuned branch is
/// sharper on tokens both pick.
fn deferral_label(base: (bool, f32), expert: (bool, f32)) -> bool {
    match (base.0, expert.0) {
        (true, _) => false,
        (false, true) => true,
        (false, false) => expert.1 > base.1,
    }
}

/// `prompt` as the served model sees it (one user turn in its own chat template, the
/// assistant turn opened) followed by `answer` and the end of turn, tokenised, with the
/// index of the answer's first token: the sequence generation feeds.
fn chat_ids(model: &LoadedModel, prompt: &str, answer: &str) -> Result<(Vec<u32>, usize)> {
    let mut ids = model.user_prompt_ids(prompt)?;
    let start = ids.len();
    ids.extend(model.answer_ids(answer)?);
    Ok((ids, start))
}

/// The first expert's own greedy answers to `prompts`, decoded together in batches.
fn self_answers(model: &LoadedModel, prompts: &[String], max_tokens: usize) -> Result<Vec<String>> {
    use crate::fusion::{Decoding, FusedSequence, Fusion, step_batch};
    let params = crate::generate::SamplingParams {
        max_tokens,
        ..crate::generate::SamplingParams::default()
    };
    let pb = bar(prompts.len(), "answers");
    let mut answers = Vec::with_capacity(prompts.len());
    for chunk in prompts.chunks(16) {
        let mut live = Vec::new();
        for p in chunk {
            let ids = model.user_prompt_ids(p)?;
            let fusion = Fusion::Single(model);
            let mut decoding = Decoding::new(&fusion, &ids, &params)?;
            let mut seq = FusedSequence::new(fusion)?;
            let next = decoding.advance(&seq.step(&ids)?, |_, _| true)?;
            live.push((seq, decoding, next));
        }
        loop {
            let (tokens, mut seqs): (Vec<u32>, Vec<&mut FusedSequence<'_>>) = live
                .iter_mut()
                .filter_map(|(s, _, n)| Some(((*n)?, s)))
                .unzip();
            if tokens.is_empty() {
                break;
            }
            let outs = step_batch(&mut seqs, &tokens)?;
            for ((_, d, n), out) in live.iter_mut().filter(|l| l.2.is_some()).zip(&outs) {
                *n = d.advance(out, |_, _| true)?;
            }
        }
        for (_, d, _) in live {
            answers.push(d.finish(|_, _| true).generation.text.trim().to_string());
            pb.inc(1);
        }
    }
    pb.finish_and_clear();
    Ok(answers)
}

/// Trains the `defer` head of `models = [first, second]` with both frozen: on every answer
/// position of reasoning, SOP and self-answered general documents (each in the first
/// expert's own chat template), the label is whether deferring helps greedy decoding
/// there ([`deferral_label`]), and the head is a logistic unit on the first expert's final
/// normed hidden state. Writes `head.json`, `head.safetensors`, `loss.json`;
/// the summary holds, per held-out domain, the label rate, the head's accuracy and its
/// deferral rate at η = 0.5.
pub fn train_deferral_head(
    models: &[&LoadedModel],
    names: &[String],
    opts: &DeferTrainOptions,
    out: &Path,
) -> Result<DeferRecord> {
    use crate::defer::{DEFER_KIND, DeferralConfig, new_head_vars};
    let [first, second] = models else {
        return Err(ExpertError::Training(format!(
            "a deferral head is for two experts, not {}",
            models.len()
        )));
    };
    let device = first.decoder.device().clone();
    let started = Instant::now();
    // Documents of each domain.
    let mut docs = Vec::new();
    for ex in corpus::reasoning_train(opts.seed, opts.n_docs / 2)
        .iter()
        .chain(corpus::sop_train(opts.seed, opts.n_docs / 2).iter())
    {
        let (ids, answer_start) = chat_ids(first, &ex.prompt, &ex.answer)?;
        docs.push(DeferDoc {
            ids,
            answer_start,
            domain: ex.domain,
        });
    }
    let questions = corpus::general_questions(opts.seed, opts.n_general);
    let answers = self_answers(first, &questions, opts.answer_tokens)?;
    for (q, a) in questions.iter().zip(&answers) {
        let (ids, answer_start) = chat_ids(first, q, a)?;
        docs.push(DeferDoc {
            ids,
            answer_start,
            domain: corpus::Domain::General,
        });
    }
    let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);
    for i in (1..docs.len()).rev() {
        let j = rng.random_range(0..=i);
        docs.swap(i, j);
    }
    // Features and labels of every answer position.
    let pb = bar(docs.len(), "positions");
    let (mut train_x, mut train_y) = (Vec::new(), Vec::new());
    let mut heldout: Vec<(corpus::Domain, Tensor, Vec<f32>)> = Vec::new();
    let mut seen_heldout = std::collections::HashMap::<&str, (usize, usize)>::new();
    for doc in &docs {
        pb.inc(1);
        let t = doc.ids.len();
        if t < 2 || doc.answer_start == 0 || doc.answer_start >= t {
            continue;
        }
        let x = Tensor::new(&doc.ids[..t - 1], &device)?.unsqueeze(0)?;
        let (hidden, logp) = expert_outputs(&[*first, *second], &x)?;
        let from = doc.answer_start - 1;
        let n = t - 1 - from;
        let targets = &doc.ids[from + 1..];
        let h = hidden[0].narrow(0, from, n)?;
        let base = position_stats(&logp[0].narrow(0, from, n)?, targets)?;
        let expert = position_stats(&logp[1].narrow(0, from, n)?, targets)?;
        let labels: Vec<f32> = base
            .iter()
            .zip(&expert)
            .map(|(b, e)| f32::from(u8::from(deferral_label(*b, *e))))
            .collect();
        let name = domain_name(doc.domain);
        let counts = seen_heldout.entry(name).or_insert((0, 0));
        counts.0 += 1;
        // Every k-th document of a domain is held out (k from the share).
        let k = (1.0 / opts.heldout_share.clamp(0.01, 0.5)).round() as usize;
        if counts.0.is_multiple_of(k) {
            counts.1 += 1;
            heldout.push((doc.domain, h, labels));
        } else {
            train_x.push(h);
            train_y.extend(labels);
        }
    }
    pb.finish_and_clear();
    if train_y.is_empty() {
        return Err(ExpertError::Training(
            "no answer positions to train on".into(),
        ));
    }
    let x = Tensor::cat(&train_x, 0)?;
    let y = Tensor::from_vec(train_y.clone(), (train_y.len(), 1), &device)?;
    let config = DeferralConfig {
        kind: DEFER_KIND.into(),
        experts: names.to_vec(),
        hidden_size: first.decoder.config().hidden_size,
    };
    let varmap = VarMap::new();
    let head = new_head_vars(&config, &varmap, &device)?;
    seed_vars(&varmap, opts.seed)?;
    let mut opt = AdamW::new(
        varmap.all_vars(),
        ParamsAdamW {
            lr: opts.lr,
            weight_decay: 1e-4,
            ..ParamsAdamW::default()
        },
    )?;
    let pb = bar(opts.steps, "defer");
    let mut losses = Vec::with_capacity(opts.steps);
    for _ in 0..opts.steps {
        let z = head.logits(&x)?.unsqueeze(1)?;
        // Binary cross-entropy with logits: softplus(z) − y·z, written stably.
        let softplus = (z.relu()? + (z.abs()?.neg()?.exp()? + 1.0)?.log()?)?;
        let loss = (softplus - (&y * &z)?)?.mean_all()?;
        opt.backward_step(&loss)?;
        let l = loss.to_scalar::<f32>()?;
        losses.push(l);
        pb.set_message(format!("loss {l:.3}"));
        pb.inc(1);
    }
    pb.finish_and_clear();
    // Held-out: per domain, how often deferring helps, how often the head agrees, and how
    // often it defers at η = 0.5.
    let mut summary = serde_json::Map::new();
    for domain in [
        corpus::Domain::General,
        corpus::Domain::Reasoning,
        corpus::Domain::Sop,
    ] {
        let (mut n, mut better, mut agree, mut deferred) = (0usize, 0.0f64, 0usize, 0usize);
        for (_, h, labels) in heldout.iter().filter(|(d, _, _)| *d == domain) {
            let p = head.probabilities(h)?;
            for (pi, li) in p.iter().zip(labels) {
                n += 1;
                better += f64::from(*li);
                let defer = *pi >= 0.5;
                deferred += usize::from(defer);
                agree += usize::from(defer == (*li > 0.5));
            }
        }
        let share = |k: f64| if n > 0 { k / n as f64 } else { 0.0 };
        summary.insert(
            domain_name(domain).into(),
            serde_json::json!({
                "positions": n,
                "should_defer": share(better),
                "accuracy": share(agree as f64),
                "defer_rate_at_0_5": share(deferred as f64),
            }),
        );
    }
    std::fs::create_dir_all(out).map_err(|e| ExpertError::io(out, e))?;
    write_json(&out.join("head.json"), &config)?;
    varmap.save(out.join("head.safetensors"))?;
    let record = DeferRecord {
        kind: DEFER_KIND.into(),
        options: opts.clone(),
        losses,
        seconds: started.elapsed().as_secs_f64(),
        summary: serde_json::Value::Object(summary),
    };
    write_json(&out.join("loss.json"), &record)?;
    Ok(record)
}

fn domain_name(d: corpus::Domain) -> &'static str {
    match d {
        corpus::Domain::General => "general",
        corpus::Domain::Reasoning => "reasoning",
        corpus::Domain::Sop => "sop",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deferral_labels_defer_only_where_the_first_expert_is_wrong() {
        // (argmax is the target, log-probability of the target)
        assert!(
            !deferral_label((true, -0.5), (true, -0.1)),
            "both right: stay"
        );
        assert!(
            !deferral_label((true, -0.5), (false, -3.0)),
            "only the first right"
        );
        assert!(
            deferral_label((false, -2.0), (true, -0.1)),
            "only the second right"
        );
        assert!(
            deferral_label((false, -2.0), (false, -1.0)),
            "both wrong, second likelier"
        );
        assert!(
            !deferral_label((false, -1.0), (false, -2.0)),
            "both wrong, first likelier"
        );
    }

    #[test]
    fn position_stats_reads_argmax_and_target() {
        let logp = Tensor::new(
            &[[-0.1f32, -2.0, -3.0], [-2.0, -3.0, -0.2]],
            &candle_core::Device::Cpu,
        )
        .unwrap();
        let stats = position_stats(&logp, &[0, 1]).unwrap();
        assert_eq!(stats, vec![(true, -0.1), (false, -3.0)]);
    }
}

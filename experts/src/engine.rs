//! The batching engine of the expert process: one thread that owns every generating
//! sequence and runs **continuous batching** at the decode step.
//!
//! Each turn of its loop:
//! 1. admits waiting jobs until `max_batch` sequences are active — a new sequence's prompt
//!    is prefilled alone, its first token sampled and streamed;
//! 2. drops sequences whose client has gone away (their KV caches are freed with them);
//! 3. runs one decode step for all active sequences together through
//!    [`step_batch`] (one batched forward per model, different models in parallel);
//! 4. streams each sequence's new text and retires the ones that ended, sending their
//!    final record.
//!
//! Prefill is not chunked: a long prompt delays the running sequences' next step by its
//! prefill time.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender};
use std::time::Instant;

use protocol::{Cost, FinalRecord, FusionMode, Timings, TokenEvent, Usage};
use tokio::sync::OwnedSemaphorePermit;
use tokio::sync::mpsc::UnboundedSender;

use crate::error::{ExpertError, Result};
use crate::fusion::{Decoding, FusedGeneration, FusedSequence, Fusion, StepOutput, step_batch};
use crate::generate::{FinishReason, SamplingParams};
use crate::server::Registry;

/// A request checked against what the process serves, ready to run.
#[derive(Debug, Clone)]
pub struct ValidRequest {
    pub mode: FusionMode,
    pub prompt_ids: Vec<u32>,
    pub params: SamplingParams,
    /// Stream the per-token mixing weights.
    pub weights: bool,
}

/// What the engine sends back for one request.
#[derive(Debug)]
pub enum Event {
    Token(TokenEvent),
    Done(FinalRecord),
    /// The generation failed inside the engine.
    Failed(String),
}

/// One admitted request.
#[derive(Debug)]
pub struct Job {
    pub request: ValidRequest,
    pub events: UnboundedSender<Event>,
    pub arrived: Instant,
    /// The admission slot, released when the sequence retires.
    pub permit: OwnedSemaphorePermit,
}

/// Binds a wire mode to the registry's models, router and mixer.
pub fn build_fusion<'r>(reg: &'r Registry, mode: &FusionMode) -> Result<Fusion<'r>> {
    let models =
        mode.models()
            .iter()
            .map(|n| {
                reg.models.get(*n).map(AsRef::as_ref).ok_or_else(|| {
                    ExpertError::InvalidRequest(format!("model {n:?} is not served"))
                })
            })
            .collect::<Result<Vec<_>>>()?;
    let names = mode.models();
    Ok(match mode {
        FusionMode::Single { .. } => Fusion::Single(
            models
                .first()
                .copied()
                .ok_or_else(|| ExpertError::InvalidRequest("no model".into()))?,
        ),
        FusionMode::Ensemble { weights, mix, .. } => Fusion::Ensemble {
            mix: *mix,
            weights: weights.clone().unwrap_or_else(|| vec![1.0; models.len()]),
            models,
        },
        FusionMode::BtmToken { router, hard, .. } => Fusion::BtmToken {
            router: pick(&reg.routers, router.as_deref(), &names, |r| {
                &r.config.experts
            })
            .ok_or_else(|| {
                ExpertError::InvalidRequest(format!(
                    "no btm_token router {} is loaded (train one with train_router)",
                    wanted(router.as_deref(), &names)
                ))
            })?,
            hard: *hard,
            models,
        },
        FusionMode::Defer {
            head, threshold, ..
        } => Fusion::Defer {
            head: pick(&reg.deferral_heads, head.as_deref(), &names, |h| {
                &h.config.experts
            })
            .ok_or_else(|| {
                ExpertError::InvalidRequest(format!(
                    "no deferral head {} is loaded (train one with train_router --kind defer)",
                    wanted(head.as_deref(), &names)
                ))
            })?,
            threshold: *threshold,
            lazy: true,
            models,
        },
        FusionMode::BtmLayer { coefficients, .. } => Fusion::BtmLayer {
            mixer: pick(&reg.mixers, coefficients.as_deref(), &names, |m| &m.experts).ok_or_else(
                || {
                    ExpertError::InvalidRequest(format!(
                        "no btm_layer coefficients {} are loaded (train them with train_router)",
                        wanted(coefficients.as_deref(), &names)
                    ))
                },
            )?,
            models,
        },
    })
}

/// The router (or coefficient set) a request gets: the one it names; else the one trained
/// for exactly its experts, in its order (the first such by name); else `default`.
fn pick<'r, T>(
    loaded: &'r HashMap<String, Arc<T>>,
    name: Option<&str>,
    models: &[&str],
    experts: impl Fn(&T) -> &Vec<String>,
) -> Option<&'r Arc<T>> {
    if let Some(name) = name {
        return loaded.get(name);
    }
    let mut keys: Vec<&String> = loaded.keys().collect();
    keys.sort();
    keys.into_iter()
        .find(|k| {
            loaded.get(*k).is_some_and(|t| {
                experts(t)
                    .iter()
                    .map(String::as_str)
                    .eq(models.iter().copied())
            })
        })
        .and_then(|k| loaded.get(k))
        .or_else(|| loaded.get("default"))
}

fn wanted(name: Option<&str>, models: &[&str]) -> String {
    match name {
        Some(n) => format!("{n:?}"),
        None => format!("for {models:?} (nor a \"default\")"),
    }
}

/// Starts the engine thread; jobs are sent through the returned channel. The thread ends
/// when every sender is gone and no sequence is left.
pub fn start(registry: Arc<Registry>, max_batch: usize) -> Result<Sender<Job>> {
    let (tx, rx) = std::sync::mpsc::channel::<Job>();
    let max_batch = max_batch.max(1);
    std::thread::Builder::new()
        .name("expert-engine".into())
        .spawn(move || {
            // A panic drops the sequences of that moment (their clients see the stream
            // end with an error); the engine goes on serving.
            while std::panic::catch_unwind(AssertUnwindSafe(|| run(&registry, &rx, max_batch)))
                .is_err()
            {
                tracing::error!("the batching engine panicked; its running sequences were lost");
                metrics::counter!("expert_engine_panics_total").increment(1);
            }
        })
        .map_err(|e| ExpertError::InvalidRequest(format!("cannot start the engine thread: {e}")))?;
    Ok(tx)
}

/// Where a sequence runs: candle (batched across sequences by [`step_batch`]) or the wgpu
/// device (stepped one sequence at a time; both run the generic fusion step).
enum Seq<'r> {
    Candle(FusedSequence<'r>),
    /// `greedy`: the argmax runs on the device and only the token id comes back.
    #[cfg(feature = "wgpu")]
    Wgpu {
        seq: Box<crate::wgpu_backend::WgpuSequence<'r>>,
        ctx: &'r gpu::GpuContext,
        greedy: bool,
    },
}

impl Seq<'_> {
    /// Feeds `ids` to this sequence alone.
    fn step(&mut self, ids: &[u32]) -> Result<StepOutput> {
        match self {
            Self::Candle(s) => s.step(ids),
            #[cfg(feature = "wgpu")]
            Self::Wgpu { seq, ctx, greedy } => {
                let cpu = &candle_core::Device::Cpu;
                if *greedy {
                    // The sampler's arg-max of a one-hot distribution is the device's token.
                    let out = seq.step_greedy(ctx, ids)?;
                    let mut one_hot = vec![0f32; seq.vocab_size()];
                    let slot = one_hot.get_mut(out.value as usize).ok_or_else(|| {
                        ExpertError::InvalidRequest(format!("token {} out of range", out.value))
                    })?;
                    *slot = 1.0;
                    let n = one_hot.len();
                    return Ok(StepOutput {
                        probs: candle_core::Tensor::from_vec(one_hot, n, cpu)?,
                        weights: out.weights,
                        catch_up: 0,
                    });
                }
                // Sampling (temperature, top-k/p, penalties) reads the distribution.
                let out = seq.step_probs(ctx, ids)?;
                let n = out.value.len();
                Ok(StepOutput {
                    probs: candle_core::Tensor::from_vec(out.value, n, cpu)?,
                    weights: out.weights,
                    catch_up: 0,
                })
            }
        }
    }
}

fn new_seq<'r>(reg: &'r Registry, fusion: Fusion<'r>, params: &SamplingParams) -> Result<Seq<'r>> {
    #[cfg(feature = "wgpu")]
    if let Some(g) = &reg.gpu {
        return Ok(Seq::Wgpu {
            seq: Box::new(g.sequence(&fusion)?),
            ctx: &g.ctx,
            greedy: params.is_greedy(),
        });
    }
    let _ = (reg, params);
    Ok(Seq::Candle(FusedSequence::new(fusion)?))
}

/// A sequence being generated.
struct Active<'r> {
    seq: Seq<'r>,
    decoding: Decoding<'r>,
    /// The token to feed at the next step; `None` once the sequence has ended.
    next: Option<u32>,
    failed: bool,
    events: UnboundedSender<Event>,
    want_weights: bool,
    mode: &'static str,
    arrived: Instant,
    queue_ms: f64,
    _permit: OwnedSemaphorePermit,
}

impl Active<'_> {
    /// Samples from a step's output and streams the new text.
    fn advance(&mut self, out: &StepOutput) {
        let (events, want) = (&self.events, self.want_weights);
        let r = self.decoding.advance(out, |piece, w| {
            events
                .send(Event::Token(TokenEvent {
                    text: piece.to_string(),
                    weights: (want && !w.is_empty()).then(|| w.to_vec()),
                }))
                .is_ok()
        });
        self.next = match r {
            Ok(next) => next,
            Err(e) => {
                self.fail(&e.to_string());
                None
            }
        };
    }

    fn fail(&mut self, message: &str) {
        let _ = self.events.send(Event::Failed(message.to_string()));
        self.failed = true;
        self.decoding.cancel();
        self.next = None;
    }

    /// Sends the final record (the sequence's caches are freed when `self` drops).
    fn retire(self) {
        if self.failed {
            return;
        }
        let events = &self.events;
        let g = self.decoding.finish(|piece, _| {
            events
                .send(Event::Token(TokenEvent {
                    text: piece.to_string(),
                    weights: None,
                }))
                .is_ok()
        });
        if g.generation.finish_reason == FinishReason::Cancelled {
            metrics::counter!("expert_cancelled_total").increment(1);
        }
        metrics::counter!("expert_generated_tokens_total", "mode" => self.mode)
            .increment(g.generation.tokens.len() as u64);
        metrics::histogram!("expert_request_seconds", "mode" => self.mode)
            .record(self.arrived.elapsed().as_secs_f64());
        let _ = events.send(Event::Done(final_record(
            &g,
            self.want_weights,
            self.queue_ms,
        )));
    }
}

/// Builds the sequence of a job, prefills its prompt and samples its first token.
fn admit(reg: &Registry, job: Job) -> Option<Active<'_>> {
    let queue_ms = job.arrived.elapsed().as_secs_f64() * 1e3;
    let Job {
        request,
        events,
        arrived,
        permit,
    } = job;
    let prepared = build_fusion(reg, &request.mode).and_then(|fusion| {
        let decoding = Decoding::new(&fusion, &request.prompt_ids, &request.params)?;
        Ok((new_seq(reg, fusion, &request.params)?, decoding))
    });
    let (seq, decoding) = match prepared {
        Ok(p) => p,
        Err(e) => {
            let _ = events.send(Event::Failed(e.to_string()));
            return None;
        }
    };
    let mut active = Active {
        seq,
        decoding,
        next: None,
        failed: false,
        events,
        want_weights: request.weights,
        mode: request.mode.name(),
        arrived,
        queue_ms,
        _permit: permit,
    };
    let started = Instant::now();
    match active.seq.step(&request.prompt_ids) {
        Ok(out) => {
            active
                .decoding
                .set_prefill_seconds(started.elapsed().as_secs_f64());
            active.advance(&out);
        }
        Err(e) => active.fail(&e.to_string()),
    }
    Some(active)
}

fn run(reg: &Registry, jobs: &Receiver<Job>, max_batch: usize) {
    let mut active: Vec<Active<'_>> = Vec::new();
    loop {
        while active.len() < max_batch {
            let job = if active.is_empty() {
                match jobs.recv() {
                    Ok(j) => j,
                    Err(_) => return,
                }
            } else {
                match jobs.try_recv() {
                    Ok(j) => j,
                    Err(_) => break,
                }
            };
            if let Some(a) = admit(reg, job) {
                active.push(a);
            }
        }
        for a in &mut active {
            if a.next.is_some() && a.events.is_closed() {
                a.decoding.cancel();
                a.next = None;
            }
        }
        let tokens: Vec<u32> = active.iter().filter_map(|a| a.next).collect();
        metrics::gauge!("expert_active_sequences").set(tokens.len() as f64);
        if !tokens.is_empty() {
            metrics::histogram!("expert_batch_size").record(tokens.len() as f64);
            // Device sequences step one by one (no cross-sequence batching on wgpu yet).
            #[cfg(feature = "wgpu")]
            for a in active.iter_mut() {
                if let (Seq::Wgpu { .. }, Some(t)) = (&a.seq, a.next) {
                    match a.seq.step(&[t]) {
                        Ok(out) => a.advance(&out),
                        Err(e) => a.fail(&format!("decode step failed: {e}")),
                    }
                }
            }
            let mut seqs: Vec<&mut FusedSequence<'_>> = Vec::new();
            let mut batched_tokens = Vec::new();
            for a in active.iter_mut() {
                if let (Seq::Candle(s), Some(t)) = (&mut a.seq, a.next) {
                    seqs.push(s);
                    batched_tokens.push(t);
                }
            }
            if !seqs.is_empty() {
                let stepped = step_batch(&mut seqs, &batched_tokens);
                drop(seqs);
                let running = active
                    .iter_mut()
                    .filter(|a| a.next.is_some() && matches!(a.seq, Seq::Candle(_)));
                match stepped {
                    Ok(outs) => running.zip(&outs).for_each(|(a, out)| a.advance(out)),
                    Err(e) => running.for_each(|a| a.fail(&format!("decode step failed: {e}"))),
                }
            }
        }
        let mut i = 0;
        while i < active.len() {
            if active[i].next.is_none() {
                active.swap_remove(i).retire();
            } else {
                i += 1;
            }
        }
        metrics::gauge!("expert_active_sequences").set(active.len() as f64);
    }
}

/// The final record of a generation.
pub fn final_record(g: &FusedGeneration, want_weights: bool, queue_ms: f64) -> FinalRecord {
    let gen_ = &g.generation;
    FinalRecord {
        finish_reason: match gen_.finish_reason {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Cancelled => "cancelled",
        }
        .into(),
        usage: Usage {
            prompt_tokens: gen_.prompt_tokens,
            completion_tokens: gen_.tokens.len(),
        },
        cost: Cost {
            forwards_per_token: g.cost,
            total_token_forwards: g.token_forwards,
        },
        timings: Timings {
            queue_ms,
            prefill_ms: gen_.prefill_seconds * 1e3,
            decode_ms: gen_.decode_seconds * 1e3,
        },
        routing_weights: (want_weights && g.routing_weights.iter().any(|w| !w.is_empty()))
            .then(|| g.routing_weights.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routers_are_picked_by_name_then_by_experts_then_default() {
        let set = |e: &[&str]| Arc::new(e.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        let mut loaded = HashMap::new();
        loaded.insert("default".to_string(), set(&["a", "b", "c"]));
        loaded.insert("b+c".to_string(), set(&["b", "c"]));
        loaded.insert("x".to_string(), set(&["a", "c"]));
        fn ids(v: &Vec<String>) -> &Vec<String> {
            v
        }
        fn got(
            loaded: &HashMap<String, Arc<Vec<String>>>,
            name: Option<&str>,
            models: &[&str],
        ) -> Option<String> {
            pick(loaded, name, models, ids).map(|t| t.join(","))
        }
        assert_eq!(got(&loaded, None, &["b", "c"]).as_deref(), Some("b,c"));
        assert_eq!(got(&loaded, None, &["a", "c"]).as_deref(), Some("a,c"));
        // Order matters: a router reads its experts' states in its own order.
        assert_eq!(got(&loaded, None, &["c", "b"]).as_deref(), Some("a,b,c"));
        assert_eq!(
            got(&loaded, Some("b+c"), &["a", "b", "c"]).as_deref(),
            Some("b,c")
        );
        assert_eq!(got(&loaded, Some("nope"), &["b", "c"]), None);
        loaded.remove("default");
        assert_eq!(got(&loaded, None, &["c", "b"]), None);
        assert!(wanted(None, &["c", "b"]).contains("[\"c\", \"b\"]"));
    }
}

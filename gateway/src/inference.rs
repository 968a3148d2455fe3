//! What `hybrid_inference` does, as a library: one prompt answered through the hybrid
//! route, or an eval file scored under every strategy.
//!
//! A [`Session`] does what the gateway does at start-up — builds the classifier, gets the
//! default models when they are missing ([`crate::bootstrap`]), starts the configured
//! `expert serve` processes ([`crate::server::Experts`]) and waits for them — and then
//! talks to the experts through the same [`Dispatcher`]. Routing uses
//! [`crate::hybrid_router::decide_routing`](crate::hybrid_router::RoutingPolicy::decide_routing)
//! with the policy the config asks for.
//!
//! # Eval files
//! JSON lines `{"prompt": str, "reference": str, "label": int}` (label = category index),
//! optionally with `"choices": [str, ...]` and `"answer": int`.
//!
//! # Quality metric
//! Per item, [`protocol::quality::score`] of the greedy answer against `reference`: exact
//! match of the final answer when the reference states one ("The answer is N" / "答案是N",
//! reasoning), token-level F1 otherwise (procedures). Multiple-choice items are scored by
//! log-likelihood by default ([`ChoiceScoring::Likelihood`]): the expert process scores
//! every choice as the assistant's answer under the strategy's fusion mode
//! (`POST /v1/score`), and the choice with the lowest mean NLL per token is the pick;
//! with [`ChoiceScoring::Generate`] the strategy answers and the choice with the highest
//! token F1 against the answer is the pick. Either way an item scores 1 when the pick is
//! `answer`. Quality per category is the mean over that category's items; overall is the
//! mean over all items.
//!
//! # Cost
//! Model forwards per token, read from each answer's final record or score
//! ([`protocol::Cost::forwards_per_token`]: 1 for one expert, 2 for two fused experts),
//! averaged over the items.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use classifier::{Classification, Classifier, ClassifierKind};
use futures_util::StreamExt;
use protocol::{
    ChatMessage, FinalRecord, FusionMode, GenerateRequest, Mix, Sampling, ScoreRequest,
};
use serde::{Deserialize, Serialize};

use crate::api::RoutingInfo;
use crate::backend::ExpertEvent;
use crate::config::GatewayConfig;
use crate::dispatch::Dispatcher;
use crate::error::{GatewayError, Result};
use crate::hybrid_router::{RoutingPolicy, policy_from_config, route_mode};
use crate::server::Experts;

/// The strategies of an eval run, in table order.
pub const STRATEGIES: [&str; 11] = [
    "foundation",
    "sft",
    "ensemble",
    "ensemble_log",
    "ensemble_routed",
    "btm_token",
    "btm_layer",
    "defer",
    "fused_top_k",
    "hybrid",
    "distilled",
];

/// Pixel size of the sweep plot (SVG and PNG).
const SWEEP_PLOT_SIZE: (u32, u32) = (720, 480);

/// Registers the embedded font plotters draws text with (once per process).
fn register_plot_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if plotters::style::register_font(
            "sans-serif",
            plotters::style::FontStyle::Normal,
            ttf_noto_sans::REGULAR,
        )
        .is_err()
        {
            tracing::warn!("the embedded plot font did not load; plot text may be missing");
        }
    });
}

/// A strategy name `--strategies` accepts: one of [`STRATEGIES`], `sft:<category>` (the
/// single experts of a config with several SFT experts) or `defer:<η>` (`defer` at the
/// threshold η in [0, 1]).
pub fn is_strategy_name(name: &str) -> bool {
    STRATEGIES.contains(&name)
        || name.strip_prefix("sft:").is_some_and(|c| !c.is_empty())
        || defer_threshold_of(name).is_some()
}

/// η of a `defer:<η>` strategy name, when it is one with η in [0, 1].
fn defer_threshold_of(name: &str) -> Option<f32> {
    name.strip_prefix("defer:")?
        .parse::<f32>()
        .ok()
        .filter(|t| (0.0..=1.0).contains(t))
}

/// What `--strategies` accepts, for its error messages.
pub const STRATEGY_FORMS: &str = "sft:<category> or defer:<η in [0, 1]>";

/// The model name that, when present in `experts.models`, is evaluated as `distilled`.
pub const DISTILLED_MODEL: &str = "distilled";

/// The command line's choices, applied over the config.
#[derive(Debug, Clone)]
pub struct InferenceOptions {
    pub config: PathBuf,
    /// Overrides `hybrid.classifier.type`.
    pub classifier_type: Option<ClassifierKind>,
    /// Overrides `hybrid.classifier.checkpoint_dir` (learned classifier).
    pub classifier_checkpoint: Option<PathBuf>,
    /// Overrides `hybrid.routing.enable_btm_fallback`.
    pub enable_btm: Option<bool>,
    /// A router name of `experts.routers`, used by `btm_token` fusion.
    pub btm_router: Option<String>,
    pub max_tokens: usize,
    /// 0 is greedy.
    pub temperature: f64,
    /// How multiple-choice eval items are scored.
    pub choices: ChoiceScoring,
    /// Eval items answered at once (the expert batches them); 1 answers them one by one.
    pub concurrency: usize,
}

/// How an eval run scores multiple-choice items.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ChoiceScoring {
    /// Both, the default: every item is answered by generation and scored on the text
    /// (keywords, final answer or token F1 against the reference: `quality`), and
    /// multiple-choice items are also scored by likelihood (`choice_quality`).
    #[default]
    Both,
    /// The choice the strategy's fusion mode gives the lowest mean NLL per token, as the
    /// whole answer (the expert's `POST /v1/score`); nothing is generated.
    Likelihood,
    /// The strategy answers; the choice with the highest token F1 against it is the pick.
    Generate,
}

impl std::str::FromStr for ChoiceScoring {
    type Err = GatewayError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "both" => Ok(Self::Both),
            "likelihood" => Ok(Self::Likelihood),
            "generate" => Ok(Self::Generate),
            other => Err(GatewayError::BadRequest(format!(
                "unknown choice scoring {other:?}; expected both, likelihood or generate"
            ))),
        }
    }
}

/// One answered prompt.
#[derive(Debug, Clone, Serialize)]
pub struct Answer {
    pub text: String,
    pub routing: RoutingInfo,
    pub record: FinalRecord,
}

/// A running set of experts with the classifier and routing policy of a config.
#[derive(Debug)]
pub struct Session {
    pub config: GatewayConfig,
    classifier: Arc<dyn Classifier>,
    policy: Arc<dyn RoutingPolicy>,
    dispatcher: Arc<Dispatcher>,
    experts: Experts,
    routers: Vec<String>,
    mixers: Vec<String>,
    deferral_heads: Vec<String>,
    options: InferenceOptions,
}

impl Session {
    /// Loads and checks everything that can be checked before any process starts, gets
    /// missing default models, starts the experts and waits until one is healthy.
    pub async fn start(options: InferenceOptions) -> Result<Self> {
        let mut config = GatewayConfig::load(&options.config)?;
        if let Some(enable) = options.enable_btm {
            config.hybrid.routing.enable_btm_fallback = enable;
        }
        let routers = experts_section_names(&config, "routers")?;
        let mixers = experts_section_names(&config, "mixers")?;
        let deferral_heads = experts_section_names(&config, "deferral_heads")?;
        if let Some(name) = &options.btm_router {
            if !routers.contains(name) {
                return Err(GatewayError::BadRequest(format!(
                    "--btm_router {name:?} is not a router of experts.routers in {} (have {routers:?})",
                    config.path.display()
                )));
            }
            if let FusionMode::BtmToken { router, .. } = &mut config.gateway.fusion {
                *router = Some(name.clone());
            }
        }
        if options.max_tokens == 0 {
            return Err(GatewayError::BadRequest(
                "--max_tokens must be at least 1".into(),
            ));
        }
        if !(0.0..=2.0).contains(&options.temperature) {
            return Err(GatewayError::BadRequest(format!(
                "--temperature {} is not in [0, 2]",
                options.temperature
            )));
        }
        let classifier: Arc<dyn Classifier> = Arc::from(config.hybrid.build_classifier(
            options.classifier_type,
            options.classifier_checkpoint.as_deref(),
        )?);
        let policy = policy_from_config(&config);

        crate::bootstrap::ensure_models(&config).await?;
        let experts = Experts::start(&config).await?;
        let dispatcher = Arc::new(Dispatcher::new(experts.backends.clone()));
        if let Err(e) = experts.wait_healthy(&dispatcher).await {
            experts.shutdown().await;
            return Err(e);
        }
        Ok(Self {
            config,
            classifier,
            policy,
            dispatcher,
            experts,
            routers,
            mixers,
            deferral_heads,
            options,
        })
    }

    /// Stops the expert processes.
    pub async fn shutdown(self) {
        self.experts.shutdown().await;
    }

    fn category_name(&self, category: usize) -> String {
        self.config
            .hybrid
            .categories
            .get(category)
            .cloned()
            .unwrap_or_default()
    }

    /// Classifies on this machine and decides the route with the configured policy.
    pub fn route(&self, prompt: &str) -> Result<(Classification, RoutingInfo, FusionMode)> {
        let c = self.classifier.classify(prompt)?;
        let (decision, mode) = route_mode(&self.config, self.policy.decide_routing(&c), &c)?;
        let info = RoutingInfo {
            category: self.category_name(c.category),
            confidence: c.confidence,
            hint_source: "server".into(),
            decision: decision.into(),
            experts: mode.models().iter().map(|m| m.to_string()).collect(),
            mode: mode.name().into(),
            threshold: self.policy.threshold(),
            cost: nominal_cost(&mode),
        };
        Ok((c, info, mode))
    }

    fn sampling(&self) -> Sampling {
        Sampling {
            temperature: self.options.temperature,
            max_tokens: self.options.max_tokens,
            ..Sampling::default()
        }
    }

    /// Generates with `mode`, handing each piece of text to `on_token` as it comes
    /// (`stream`), or all of it at the end.
    pub async fn generate(
        &self,
        mode: FusionMode,
        prompt: &str,
        stream: bool,
        mut on_token: impl FnMut(&str),
    ) -> Result<(String, FinalRecord)> {
        let request = GenerateRequest {
            mode,
            prompt: None,
            messages: Some(vec![ChatMessage {
                role: "user".into(),
                content: prompt.to_string(),
            }]),
            sampling: self.sampling(),
            stream,
            return_routing_weights: false,
        };
        let mut events = self.dispatcher.generate(request).await?;
        let mut text = String::new();
        while let Some(event) = events.next().await {
            match event? {
                ExpertEvent::Token(t) => {
                    on_token(&t.text);
                    text.push_str(&t.text);
                }
                ExpertEvent::Done(record) => return Ok((text, record)),
            }
        }
        Err(GatewayError::Upstream(
            "the expert's stream ended without a final record".into(),
        ))
    }

    /// Answers one prompt through the hybrid route; the routing's `cost` is the one the
    /// expert measured.
    pub async fn answer(&self, prompt: &str, on_token: impl FnMut(&str)) -> Result<Answer> {
        if prompt.trim().is_empty() {
            return Err(GatewayError::BadRequest("--prompt is empty".into()));
        }
        let (_, mut routing, mode) = self.route(prompt)?;
        let (text, record) = self.generate(mode, prompt, true, on_token).await?;
        routing.cost = record.cost.forwards_per_token;
        Ok(Answer {
            text,
            routing,
            record,
        })
    }

    /// The strategies this config can run, and why the others are skipped.
    pub fn strategies(&self) -> (Vec<(String, Strategy)>, BTreeMap<String, String>) {
        let g = &self.config.gateway;
        let fused: Vec<String> = g.fusion.models().iter().map(|m| m.to_string()).collect();
        let mut run = Vec::new();
        let mut skipped = BTreeMap::new();
        let mut add = |name: &str, s: std::result::Result<Strategy, String>| match s {
            Ok(s) => run.push((name.to_string(), s)),
            Err(why) => {
                skipped.insert(name.to_string(), why);
            }
        };
        add(
            "foundation",
            Ok(Strategy::Fixed(FusionMode::Single {
                model: g.foundation_model.clone(),
            })),
        );
        // The category experts other than the foundation: one `sft` strategy, or with several
        // (three or more experts) one `sft:<category>` each.
        let mut sfts: Vec<(&String, &String)> = Vec::new();
        for c in &self.config.hybrid.categories {
            if let Some(m) = g.category_experts.get(c)
                && *m != g.foundation_model
                && !sfts.iter().any(|(_, seen)| *seen == m)
            {
                sfts.push((c, m));
            }
        }
        match sfts.as_slice() {
            [] => add(
                "sft",
                Err("no category expert other than the foundation model".to_string()),
            ),
            [(_, m)] => add(
                "sft",
                Ok(Strategy::Fixed(FusionMode::Single {
                    model: (*m).clone(),
                })),
            ),
            many => {
                for (c, m) in many {
                    add(
                        &format!("sft:{c}"),
                        Ok(Strategy::Fixed(FusionMode::Single {
                            model: (*m).clone(),
                        })),
                    );
                }
            }
        }
        // The seed's plain ensemble (equal weights, probabilities averaged); the same in
        // log space; and in log space with each item's weights from its classification.
        for (name, mix) in [("ensemble", Mix::Linear), ("ensemble_log", Mix::Log)] {
            add(
                name,
                Ok(Strategy::Fixed(FusionMode::Ensemble {
                    models: fused.clone(),
                    weights: None,
                    mix,
                })),
            );
        }
        add(
            "ensemble_routed",
            Ok(Strategy::Routed(FusionMode::Ensemble {
                models: fused.clone(),
                weights: None,
                mix: Mix::Log,
            })),
        );
        let router = self.options.btm_router.clone().or_else(|| match &g.fusion {
            FusionMode::BtmToken { router, .. } => router.clone(),
            _ => None,
        });
        add(
            "btm_token",
            if self.routers.is_empty() {
                Err("no experts.routers in the config (train_router)".into())
            } else {
                Ok(Strategy::Fixed(FusionMode::BtmToken {
                    models: fused.clone(),
                    router,
                    hard: false,
                }))
            },
        );
        add(
            "btm_layer",
            if self.mixers.is_empty() {
                Err("no experts.mixers in the config (train_router)".into())
            } else {
                Ok(Strategy::Fixed(FusionMode::BtmLayer {
                    models: fused.clone(),
                    coefficients: None,
                }))
            },
        );
        // At the configured fusion's threshold when it is `defer`, else the default one;
        // `defer:<η>` names another (see [`Session::defer_at`]).
        let threshold = match &g.fusion {
            FusionMode::Defer { threshold, .. } => *threshold,
            _ => protocol::DEFAULT_DEFER_THRESHOLD,
        };
        add("defer", self.defer_at(threshold));
        add(
            "fused_top_k",
            match g.fusion_top_k {
                Some(_) => Ok(Strategy::FusedTopK),
                None => Err("gateway.fusion_top_k is not set".into()),
            },
        );
        add("hybrid", Ok(Strategy::Hybrid));
        add(
            "distilled",
            if self
                .config
                .expert_models
                .iter()
                .any(|m| m == DISTILLED_MODEL)
            {
                Ok(Strategy::Fixed(FusionMode::Single {
                    model: DISTILLED_MODEL.into(),
                }))
            } else {
                Err(format!(
                    "no `{DISTILLED_MODEL}` model in experts.models (build one with `distill`)"
                ))
            },
        );
        (run, skipped)
    }

    /// `defer` from the first of the fused experts (the foundation) to the second, at η.
    fn defer_at(&self, threshold: f32) -> std::result::Result<Strategy, String> {
        let fused = self.config.gateway.fusion.models();
        if self.deferral_heads.is_empty() {
            return Err(
                "no experts.deferral_heads in the config (train_router --kind defer)".into(),
            );
        }
        let [first, second, ..] = fused.as_slice() else {
            return Err("gateway.fusion has fewer than two models".into());
        };
        Ok(Strategy::Fixed(FusionMode::Defer {
            models: vec![first.to_string(), second.to_string()],
            head: None,
            threshold,
        }))
    }

    /// The threshold trade-off, computed from the per-item results of the single experts
    /// and the configured fusion (no extra generation): for each threshold, every item goes
    /// to its category's expert when the classifier's confidence reaches it, else to the
    /// fallback (the fusion, or the foundation model without BTM fallback).
    pub fn sweep(
        &self,
        results: &BTreeMap<String, StrategyResult>,
        items: &[EvalItem],
    ) -> std::result::Result<Vec<SweepPoint>, String> {
        let g = &self.config.gateway;
        let (runnable, _) = self.strategies();
        let mut by_mode: Vec<(FusionMode, &StrategyResult)> = Vec::new();
        for (name, strategy) in &runnable {
            if let (Strategy::Fixed(mode), Some(r)) = (strategy, results.get(name)) {
                by_mode.push((mode.clone(), r));
            }
        }
        let single = |model: &str| {
            by_mode.iter().find_map(|(m, r)| match m {
                FusionMode::Single { model: x } if x == model => Some(*r),
                _ => None,
            })
        };
        let fallback_fused = self.config.hybrid.routing.enable_btm_fallback;
        let fallback = if fallback_fused && g.fusion_top_k.is_some() {
            results
                .get("fused_top_k")
                .ok_or_else(|| "the fused_top_k strategy did not run".to_string())?
        } else if fallback_fused {
            by_mode
                .iter()
                .find_map(|(m, r)| (m.name() == g.fusion.name()).then_some(*r))
                .ok_or_else(|| format!("the fusion {} did not run", g.fusion.name()))?
        } else {
            single(&g.foundation_model)
                .ok_or_else(|| format!("{} did not run", g.foundation_model))?
        };
        let mut routes = Vec::with_capacity(items.len());
        for item in items {
            let c = self
                .classifier
                .classify(&item.prompt)
                .map_err(|e| e.to_string())?;
            let name = self.category_name(c.category);
            let expert = g
                .category_experts
                .get(&name)
                .ok_or_else(|| format!("no expert for category {name}"))?;
            let r = single(expert).ok_or_else(|| format!("{expert} did not run"))?;
            routes.push((f64::from(c.confidence), r));
        }
        let thresholds = (10..=19).map(|k| f64::from(k) * 0.05).chain([0.99]);
        Ok(thresholds
            .map(|t| {
                let (mut q, mut cost, mut fused) = (0.0, 0.0, 0usize);
                for (i, (conf, expert)) in routes.iter().enumerate() {
                    let r = if *conf >= t { *expert } else { fallback };
                    if *conf < t && fallback_fused {
                        fused += 1;
                    }
                    let (score, c) = r.per_item.get(i).copied().unwrap_or_default();
                    q += score;
                    cost += c;
                }
                let n = items.len().max(1) as f64;
                SweepPoint {
                    threshold: t,
                    quality: q / n,
                    cost: cost / n,
                    btm_share: fused as f64 / n,
                }
            })
            .collect())
    }

    /// Answers and scores one item under one strategy.
    async fn evaluate_item(&self, strategy: &Strategy, item: &EvalItem) -> Result<ItemOutcome> {
        let mode = match strategy {
            Strategy::Fixed(mode) => mode.clone(),
            Strategy::Routed(mode) => self
                .config
                .weighted_by(mode.clone(), &self.classifier.classify(&item.prompt)?),
            Strategy::Hybrid => self.route(&item.prompt)?.2,
            Strategy::FusedTopK => self
                .config
                .fusion_for(&self.classifier.classify(&item.prompt)?),
        };
        let mut outcome = ItemOutcome {
            label: item.label,
            mode: mode.name(),
            fused: !matches!(mode, FusionMode::Single { .. }),
            ..ItemOutcome::default()
        };
        let generated = match (&item.choices, self.options.choices) {
            (Some(choices), ChoiceScoring::Likelihood) => {
                let (pick, spent) = self.pick_choice(mode, &item.prompt, choices).await?;
                outcome.score = f64::from(u8::from(Some(pick) == item.answer));
                outcome.forwards_per_token = f64::from(spent.forwards_per_token);
                outcome.token_forwards = spent.total_token_forwards;
                return Ok(outcome);
            }
            _ => {
                self.generate(mode.clone(), &item.prompt, false, |_| {})
                    .await?
            }
        };
        let (text, r) = generated;
        outcome.forwards_per_token = f64::from(r.cost.forwards_per_token);
        outcome.completion_tokens = r.usage.completion_tokens;
        outcome.token_forwards = r.cost.total_token_forwards;
        outcome.score = if self.options.choices == ChoiceScoring::Both {
            if let Some(choices) = &item.choices {
                let (pick, spent) = self.pick_choice(mode, &item.prompt, choices).await?;
                outcome.choice_score = Some(f64::from(u8::from(Some(pick) == item.answer)));
                outcome.token_forwards += spent.total_token_forwards;
            }
            item.score_generated(&text)
        } else {
            item.score(&text)
        };
        outcome.answer = text;
        Ok(outcome)
    }

    /// Runs every item under one strategy, `InferenceOptions::concurrency` at a time (the
    /// expert batches them; results stay in the file's order), so wall time is per strategy.
    pub async fn evaluate(
        &self,
        strategy: &Strategy,
        items: &[EvalItem],
    ) -> Result<StrategyResult> {
        use futures_util::{StreamExt, TryStreamExt};
        let start = Instant::now();
        let outcomes: Vec<ItemOutcome> =
            futures_util::stream::iter(items.iter().map(|item| self.evaluate_item(strategy, item)))
                .buffered(self.options.concurrency.max(1))
                .try_collect()
                .await?;
        let scores: Vec<(usize, f64)> = outcomes.iter().map(|o| (o.label, o.score)).collect();
        let choice_scores: Vec<(usize, f64)> = outcomes
            .iter()
            .filter_map(|o| Some((o.label, o.choice_score?)))
            .collect();
        let per_item: Vec<(f64, f64)> = outcomes
            .iter()
            .map(|o| (o.score, o.forwards_per_token))
            .collect();
        let cost: f64 = outcomes.iter().map(|o| o.forwards_per_token).sum();
        let fused = outcomes.iter().filter(|o| o.fused).count();
        let tokens: usize = outcomes.iter().map(|o| o.completion_tokens).sum();
        let forwards: u64 = outcomes.iter().map(|o| o.token_forwards).sum();
        let answers = outcomes
            .into_iter()
            .map(|o| ItemAnswer {
                mode: o.mode.to_string(),
                score: o.score,
                cost: o.forwards_per_token,
                answer: o.answer,
            })
            .collect();
        let n = items.len();
        let mean = |v: &mut dyn Iterator<Item = f64>| {
            let (sum, k) = v.fold((0.0, 0usize), |(s, k), x| (s + x, k + 1));
            (k > 0).then(|| sum / k as f64)
        };
        let per_category = |scores: &[(usize, f64)]| -> BTreeMap<String, f64> {
            self.config
                .hybrid
                .categories
                .iter()
                .enumerate()
                .filter_map(|(i, name)| {
                    let q = mean(&mut scores.iter().filter(|(l, _)| *l == i).map(|(_, s)| *s))?;
                    Some((name.clone(), q))
                })
                .collect()
        };
        let by_category = per_category(&scores);
        let choice_by_category = per_category(&choice_scores);
        Ok(StrategyResult {
            quality: mean(&mut scores.iter().map(|(_, s)| *s)).unwrap_or(0.0),
            quality_by_category: by_category,
            choice_quality: mean(&mut choice_scores.iter().map(|(_, s)| *s)),
            choice_quality_by_category: choice_by_category,
            versus_hybrid: BTreeMap::new(),
            cost: if n > 0 { cost / n as f64 } else { 0.0 },
            n,
            btm_share: if n > 0 { fused as f64 / n as f64 } else { 0.0 },
            wall_s: start.elapsed().as_secs_f64(),
            completion_tokens: tokens,
            total_token_forwards: forwards,
            per_item,
            answers,
        })
    }

    /// The choice `mode` finds likeliest as the whole answer to `prompt` (lowest mean NLL
    /// per token, the first on ties), and what scoring them cost.
    pub async fn pick_choice(
        &self,
        mode: FusionMode,
        prompt: &str,
        choices: &[String],
    ) -> Result<(usize, protocol::Cost)> {
        let response = self
            .dispatcher
            .score(ScoreRequest {
                mode,
                prompt: None,
                messages: Some(vec![ChatMessage {
                    role: "user".into(),
                    content: prompt.to_string(),
                }]),
                continuations: choices.to_vec(),
            })
            .await?;
        if response.scores.len() != choices.len() {
            return Err(GatewayError::Upstream(format!(
                "the expert scored {} of {} choices",
                response.scores.len(),
                choices.len()
            )));
        }
        let pick = response.scores.iter().enumerate().fold(0, |best, (i, s)| {
            if s.mean_nll < response.scores[best].mean_nll {
                i
            } else {
                best
            }
        });
        Ok((pick, response.cost))
    }

    /// Runs `names` (all runnable strategies when empty) over the items.
    pub async fn evaluate_all(&self, items: &[EvalItem], names: &[String]) -> Result<EvalReport> {
        let (mut runnable, mut skipped) = self.strategies();
        // `defer:<η>` strategies, in the order asked, after `defer`.
        let at = runnable
            .iter()
            .position(|(n, _)| n == "defer")
            .map_or(runnable.len(), |i| i + 1);
        let mut extra = Vec::new();
        for name in names {
            if let Some(t) = defer_threshold_of(name)
                && !extra.iter().any(|(n, _)| n == name)
            {
                match self.defer_at(t) {
                    Ok(s) => extra.push((name.clone(), s)),
                    Err(why) => {
                        skipped.insert(name.clone(), why);
                    }
                }
            }
        }
        runnable.splice(at..at, extra);
        for name in names {
            if !is_strategy_name(name) {
                return Err(GatewayError::BadRequest(format!(
                    "unknown strategy {name:?}; expected some of {STRATEGIES:?}, {STRATEGY_FORMS}"
                )));
            }
        }
        let mut strategies = BTreeMap::new();
        let mut order = Vec::new();
        for (name, strategy) in runnable {
            // `sft` also selects every `sft:<category>`.
            let asked = names.contains(&name)
                || (name.starts_with("sft:") && names.iter().any(|n| n == "sft"));
            if !names.is_empty() && !asked {
                skipped.insert(name, "not asked for (--strategies)".into());
                continue;
            }
            eprintln!("eval: {name} on {} items…", items.len());
            let result = self.evaluate(&strategy, items).await?;
            eprintln!(
                "eval: {name}: quality {:.3}, cost {:.2}, {:.1} s",
                result.quality, result.cost, result.wall_s
            );
            order.push(name.clone());
            strategies.insert(name, result);
        }
        compare_to_hybrid(&mut strategies, items, &self.config.hybrid.categories);
        let sweep = match self.sweep(&strategies, items) {
            Ok(points) => Some(points),
            Err(why) => {
                eprintln!("eval: no threshold sweep: {why}");
                None
            }
        };
        Ok(EvalReport {
            strategies,
            order,
            skipped,
            sweep,
            categories: self.config.hybrid.categories.clone(),
            metric: match self.options.choices {
                ChoiceScoring::Both => format!("{GENERATED_METRIC}; {CHOICES_BOTH}"),
                ChoiceScoring::Likelihood => format!("{METRIC}; {CHOICES_BY_LIKELIHOOD}"),
                ChoiceScoring::Generate => format!("{METRIC}; {CHOICES_BY_GENERATION}"),
            },
        })
    }
}

const METRIC: &str = "per item: exact final-answer match when the reference states one (reasoning), token F1 otherwise (SOP)";
const GENERATED_METRIC: &str = "quality: every item answered by generation, scored on the text: 1 if one of its keywords is in the answer (short-answer items), else exact final-answer match when the reference states one, else token F1 against the reference (procedures)";
const CHOICES_BOTH: &str = "choice quality: multiple-choice items also scored by likelihood (the choice with the lowest mean NLL per token under the strategy's fusion, 1 if it is `answer`)";
const CHOICES_BY_LIKELIHOOD: &str = "multiple choice: the choice with the lowest mean NLL per token under the strategy's fusion, 1 if it is `answer`";
const CHOICES_BY_GENERATION: &str =
    "multiple choice: generate, pick the choice with the highest token F1, 1 if it is `answer`";

fn nominal_cost(mode: &FusionMode) -> f32 {
    match mode {
        FusionMode::Single { .. } => 1.0,
        other => other.models().len() as f32,
    }
}

/// The names under `experts.<section>` of the config file (routers, mixers).
fn experts_section_names(config: &GatewayConfig, section: &str) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(&config.path)
        .map_err(|e| GatewayError::io(config.path.display().to_string(), e))?;
    let doc: serde_yaml::Value = serde_yaml::from_str(&text)
        .map_err(|e| GatewayError::Internal(format!("{}: {e}", config.path.display())))?;
    Ok(doc
        .get("experts")
        .and_then(|e| e.get(section))
        .and_then(|m| m.as_mapping())
        .map(|m| {
            m.keys()
                .filter_map(|k| k.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default())
}

/// How an eval run answers each item.
#[derive(Debug, Clone, PartialEq)]
pub enum Strategy {
    /// The same fusion mode for every item.
    Fixed(FusionMode),
    /// This ensemble for every item, its weights from the item's classification
    /// ([`GatewayConfig::weighted_by`]).
    Routed(FusionMode),
    /// The classifier and the routing policy choose per item.
    Hybrid,
    /// `gateway.fusion` over each item's `gateway.fusion_top_k` most likely categories'
    /// experts, for every item (what the hybrid does below the threshold).
    FusedTopK,
}

/// One line of an eval file.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct EvalItem {
    pub prompt: String,
    pub reference: String,
    /// Category index.
    pub label: usize,
    #[serde(default)]
    pub choices: Option<Vec<String>>,
    #[serde(default)]
    pub answer: Option<usize>,
    /// Accepted short answers of a short-answer item (any one, as whole words, scores 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keywords: Option<Vec<String>>,
}

impl EvalItem {
    /// The item's score of one generated answer: keyword match when the item lists
    /// keywords; else, for multiple choice, 1 when the choice closest to the answer (token
    /// F1) is the right one; else final-answer match or token F1 against the reference.
    /// The score of a generated answer on its own text, never through the choices:
    /// keyword match, else final-answer match or token F1 against the reference.
    pub fn score_generated(&self, text: &str) -> f64 {
        match &self.keywords {
            Some(keywords) => protocol::quality::keyword_match(text, keywords),
            None => protocol::quality::score(text, &self.reference),
        }
    }

    pub fn score(&self, text: &str) -> f64 {
        if let Some(keywords) = &self.keywords {
            return protocol::quality::keyword_match(text, keywords);
        }
        match (&self.choices, self.answer) {
            (Some(choices), Some(answer)) => {
                let pick = choices
                    .iter()
                    .enumerate()
                    .map(|(i, c)| (i, protocol::quality::token_f1(text, c)))
                    .fold(None::<(usize, f64)>, |best, (i, f)| match best {
                        Some((_, bf)) if bf >= f => best,
                        _ => Some((i, f)),
                    });
                f64::from(u8::from(pick.map(|(i, _)| i) == Some(answer)))
            }
            _ => protocol::quality::score(text, &self.reference),
        }
    }
}

/// Reads and checks an eval file: every line an [`EvalItem`] with a known label.
pub fn read_eval_file(path: &Path, categories: &[String]) -> Result<Vec<EvalItem>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| GatewayError::io(format!("reading the eval file {}", path.display()), e))?;
    let mut items = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad =
            |m: String| GatewayError::BadRequest(format!("{}:{}: {m}", path.display(), i + 1));
        let item: EvalItem = serde_json::from_str(line).map_err(|e| {
            bad(format!(
                "not an eval item {{\"prompt\", \"reference\", \"label\"}}: {e}"
            ))
        })?;
        if item.prompt.trim().is_empty() {
            return Err(bad("`prompt` is empty".into()));
        }
        if item.label >= categories.len() {
            return Err(bad(format!(
                "`label` {} is not a category index (0..{} for {categories:?})",
                item.label,
                categories.len()
            )));
        }
        match (&item.choices, item.answer) {
            (None, None) => {}
            (Some(choices), Some(answer)) => {
                if choices.len() < 2 {
                    return Err(bad("`choices` needs at least two entries".into()));
                }
                if answer >= choices.len() {
                    return Err(bad(format!(
                        "`answer` {answer} is not an index of `choices` (0..{})",
                        choices.len()
                    )));
                }
            }
            _ => return Err(bad("`choices` and `answer` go together".into())),
        }
        if let Some(keywords) = &item.keywords
            && (keywords.is_empty() || keywords.iter().any(|k| k.trim().is_empty()))
        {
            return Err(bad("`keywords` needs at least one non-empty keyword".into()));
        }
        items.push(item);
    }
    if items.is_empty() {
        return Err(GatewayError::BadRequest(format!(
            "the eval file {} has no items",
            path.display()
        )));
    }
    Ok(items)
}

/// The scores of one strategy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StrategyResult {
    /// Mean score over all items.
    pub quality: f64,
    /// Mean score per category name (categories with items).
    pub quality_by_category: BTreeMap<String, f64>,
    /// With `--choices both`: multiple-choice accuracy by likelihood, over the items with
    /// choices, overall and per category.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub choice_quality: Option<f64>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub choice_quality_by_category: BTreeMap<String, f64>,
    /// This strategy's `quality` minus `hybrid`'s on the same items, overall (`overall`)
    /// and per category, with a paired bootstrap 95 % interval.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub versus_hybrid: BTreeMap<String, PairedDifference>,
    /// Mean model forwards per generated token.
    pub cost: f64,
    pub n: usize,
    /// Share of items answered by a fusion of experts.
    pub btm_share: f64,
    pub wall_s: f64,
    pub completion_tokens: usize,
    pub total_token_forwards: u64,
    /// Per item, in the eval file's order: (score, forwards per token).
    #[serde(skip)]
    pub per_item: Vec<(f64, f64)>,
    /// Per item, in the eval file's order: how it was answered, its score and the text
    /// (empty when nothing was generated).
    pub answers: Vec<ItemAnswer>,
}

/// One eval item's answer under one strategy (in `results.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ItemAnswer {
    /// The fusion mode that answered (`single`, `btm_token`, …).
    pub mode: String,
    pub score: f64,
    /// Model forwards per generated token (for `defer`, the catch-up counted).
    pub cost: f64,
    pub answer: String,
}

/// What one item gave under one strategy.
#[derive(Debug, Default)]
struct ItemOutcome {
    label: usize,
    mode: &'static str,
    fused: bool,
    score: f64,
    choice_score: Option<f64>,
    forwards_per_token: f64,
    completion_tokens: usize,
    token_forwards: u64,
    answer: String,
}

/// A mean paired difference and its bootstrap 95 % interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PairedDifference {
    pub mean: f64,
    pub low: f64,
    pub high: f64,
    pub n: usize,
}

/// Bootstrap resamples of a paired difference.
pub const BOOTSTRAP_RESAMPLES: usize = 2000;

/// The mean of `a[i] - b[i]` and its percentile bootstrap 95 % interval: items are drawn
/// with replacement [`BOOTSTRAP_RESAMPLES`] times, the pairs kept together (the same item
/// under both strategies), with a fixed seed so a report is reproducible. `None` when the
/// slices are empty or of different lengths.
pub fn paired_bootstrap(a: &[f64], b: &[f64], seed: u64) -> Option<PairedDifference> {
    use rand::{Rng, SeedableRng};
    if a.is_empty() || a.len() != b.len() {
        return None;
    }
    let d: Vec<f64> = a.iter().zip(b).map(|(x, y)| x - y).collect();
    let n = d.len();
    let mean = d.iter().sum::<f64>() / n as f64;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut means: Vec<f64> = (0..BOOTSTRAP_RESAMPLES)
        .map(|_| (0..n).map(|_| d[rng.random_range(0..n)]).sum::<f64>() / n as f64)
        .collect();
    means.sort_by(f64::total_cmp);
    let at = |q: f64| means[((q * (means.len() - 1) as f64).round() as usize).min(means.len() - 1)];
    Some(PairedDifference {
        mean,
        low: at(0.025),
        high: at(0.975),
        n,
    })
}

/// Fills every strategy's `versus_hybrid` from the per-item scores (nothing without a
/// `hybrid` result).
fn compare_to_hybrid(
    strategies: &mut BTreeMap<String, StrategyResult>,
    items: &[EvalItem],
    categories: &[String],
) {
    let Some(hybrid) = strategies.get("hybrid").map(|r| r.per_item.clone()) else {
        return;
    };
    for (name, r) in strategies.iter_mut() {
        if name == "hybrid" || r.per_item.len() != hybrid.len() {
            continue;
        }
        let mut groups: Vec<(String, Option<usize>)> = vec![("overall".into(), None)];
        groups.extend(
            categories
                .iter()
                .cloned()
                .enumerate()
                .map(|(i, c)| (c, Some(i))),
        );
        for (group, label) in groups {
            let keep =
                |i: &usize| label.is_none_or(|l| items.get(*i).is_some_and(|it| it.label == l));
            let idx: Vec<usize> = (0..hybrid.len()).filter(keep).collect();
            let a: Vec<f64> = idx.iter().map(|&i| r.per_item[i].0).collect();
            let b: Vec<f64> = idx.iter().map(|&i| hybrid[i].0).collect();
            if let Some(d) = paired_bootstrap(&a, &b, 7) {
                r.versus_hybrid.insert(group, d);
            }
        }
    }
}

/// One threshold of the cost–quality trade-off.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SweepPoint {
    pub threshold: f64,
    pub quality: f64,
    /// Mean model forwards per token.
    pub cost: f64,
    pub btm_share: f64,
}

/// The result of an eval run.
#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    pub strategies: BTreeMap<String, StrategyResult>,
    /// Strategies in the order they ran.
    #[serde(skip)]
    pub order: Vec<String>,
    /// Strategy → why it did not run.
    pub skipped: BTreeMap<String, String>,
    #[serde(skip)]
    pub categories: Vec<String>,
    pub metric: String,
    /// Quality and cost of the threshold rule from 0.5 to 0.99 (when the single experts
    /// and the fusion ran).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sweep: Option<Vec<SweepPoint>>,
}

impl EvalReport {
    /// The markdown table (and the skipped strategies under it).
    pub fn table(&self) -> String {
        let mut out = String::from("| strategy |");
        for c in &self.categories {
            out.push_str(&format!(" quality {c} |"));
        }
        let choices = self.strategies.values().any(|r| r.choice_quality.is_some());
        let paired = self
            .strategies
            .values()
            .any(|r| !r.versus_hybrid.is_empty());
        out.push_str(" quality overall |");
        if choices {
            out.push_str(" choice accuracy (likelihood) |");
        }
        if paired {
            out.push_str(" Δ quality vs hybrid [95 % CI] |");
        }
        out.push_str(" cost (forwards/token) | wall s | routed to BTM | n |\n|---|");
        for _ in &self.categories {
            out.push_str("---:|");
        }
        out.push_str(&"---:|".repeat(1 + usize::from(choices) + usize::from(paired)));
        out.push_str("---:|---:|---:|---:|\n");
        for name in &self.order {
            let Some(r) = self.strategies.get(name) else {
                continue;
            };
            out.push_str(&format!("| {name} |"));
            for c in &self.categories {
                match r.quality_by_category.get(c) {
                    Some(q) => out.push_str(&format!(" {q:.3} |")),
                    None => out.push_str(" – |"),
                }
            }
            out.push_str(&format!(" {:.3} |", r.quality));
            if choices {
                match r.choice_quality {
                    Some(q) => out.push_str(&format!(" {q:.3} |")),
                    None => out.push_str(" – |"),
                }
            }
            if paired {
                match r.versus_hybrid.get("overall") {
                    Some(d) => out.push_str(&format!(
                        " {:+.3} [{:+.3}, {:+.3}] |",
                        d.mean, d.low, d.high
                    )),
                    None => out.push_str(" – |"),
                }
            }
            out.push_str(&format!(
                " {:.2} | {:.1} | {:.0}% | {} |\n",
                r.cost,
                r.wall_s,
                100.0 * r.btm_share,
                r.n
            ));
        }
        for (name, why) in &self.skipped {
            out.push_str(&format!("\n{name}: skipped ({why})"));
        }
        if !self.skipped.is_empty() {
            out.push('\n');
        }
        if paired {
            out.push_str(
                "\nPaired differences to hybrid per category (same items, bootstrap 95 % interval; an interval that holds 0 is no difference beyond noise):\n\n| strategy |",
            );
            for c in &self.categories {
                out.push_str(&format!(" Δ {c} |"));
            }
            out.push_str("\n|---|");
            out.push_str(&"---:|".repeat(self.categories.len()));
            out.push('\n');
            for name in &self.order {
                let Some(r) = self.strategies.get(name) else {
                    continue;
                };
                if r.versus_hybrid.is_empty() {
                    continue;
                }
                out.push_str(&format!("| {name} |"));
                for c in &self.categories {
                    match r.versus_hybrid.get(c) {
                        Some(d) => out.push_str(&format!(
                            " {:+.3} [{:+.3}, {:+.3}] |",
                            d.mean, d.low, d.high
                        )),
                        None => out.push_str(" – |"),
                    }
                }
                out.push('\n');
            }
        }
        out.push_str(&format!("\nQuality: {}.\n", self.metric));
        if let Some(points) = &self.sweep {
            out.push_str(
                "\nThreshold sweep (the seed's rule; from the per-item results above):\n\n",
            );
            out.push_str("| threshold | quality | cost (forwards/token) | routed to BTM |\n");
            out.push_str("|---:|---:|---:|---:|\n");
            for p in points {
                out.push_str(&format!(
                    "| {:.2} | {:.3} | {:.2} | {:.0}% |\n",
                    p.threshold,
                    p.quality,
                    p.cost,
                    100.0 * p.btm_share
                ));
            }
        }
        out
    }

    /// The cost–quality curve of the sweep as SVG: the threshold rule's points (0.85, the
    /// seed's default, marked) and each fixed strategy as a labelled point.
    pub fn sweep_svg(&self) -> Option<String> {
        use plotters::prelude::*;
        let mut svg = String::new();
        {
            let root = SVGBackend::with_string(&mut svg, SWEEP_PLOT_SIZE).into_drawing_area();
            self.draw_sweep(&root)?;
        }
        Some(svg)
    }

    /// The same plot as [`Self::sweep_svg`], as a PNG file at `path` (text drawn with the
    /// embedded Noto Sans font, so no system font is needed).
    pub fn sweep_png(&self, path: &Path) -> Option<()> {
        use plotters::prelude::*;
        let root = BitMapBackend::new(path, SWEEP_PLOT_SIZE).into_drawing_area();
        self.draw_sweep(&root)
    }

    fn draw_sweep<DB: plotters::prelude::DrawingBackend>(
        &self,
        root: &plotters::drawing::DrawingArea<DB, plotters::coord::Shift>,
    ) -> Option<()> {
        use plotters::prelude::*;
        register_plot_font();
        let points = self.sweep.as_ref()?;
        let fixed: Vec<(&String, &StrategyResult)> = self
            .strategies
            .iter()
            .filter(|(name, _)| name.as_str() != "hybrid")
            .collect();
        let qmax = points
            .iter()
            .map(|p| p.quality)
            .chain(fixed.iter().map(|(_, r)| r.quality))
            .fold(0.0f64, f64::max)
            .max(0.05)
            * 1.15;
        let cmax = points
            .iter()
            .map(|p| p.cost)
            .chain(fixed.iter().map(|(_, r)| r.cost))
            .fold(2.0f64, f64::max)
            + 0.35;
        let draw = || -> std::result::Result<(), Box<dyn std::error::Error + '_>> {
            root.fill(&WHITE)?;
            let mut chart = ChartBuilder::on(root)
                .caption("quality vs cost: threshold sweep", ("sans-serif", 20))
                .margin(16)
                .x_label_area_size(40)
                .y_label_area_size(50)
                .build_cartesian_2d(0.9f64..cmax, 0.0f64..qmax)?;
            chart
                .configure_mesh()
                .x_desc("mean cost (model forwards per token)")
                .y_desc("quality")
                .draw()?;
            chart.draw_series(LineSeries::new(
                points.iter().map(|p| (p.cost, p.quality)),
                &BLUE,
            ))?;
            chart.draw_series(
                points
                    .iter()
                    .map(|p| Circle::new((p.cost, p.quality), 3, BLUE.filled())),
            )?;
            if let Some(p) = points.iter().find(|p| (p.threshold - 0.85).abs() < 1e-9) {
                chart.draw_series([Circle::new((p.cost, p.quality), 7, RED.stroke_width(2))])?;
                chart.draw_series([Text::new(
                    "threshold 0.85",
                    (p.cost + 0.02, p.quality),
                    ("sans-serif", 14).into_font().color(&RED),
                )])?;
            }
            for (name, r) in &fixed {
                chart.draw_series([TriangleMarker::new((r.cost, r.quality), 6, BLACK.filled())])?;
                chart.draw_series([Text::new(
                    name.to_string(),
                    (r.cost + 0.02, r.quality),
                    ("sans-serif", 13).into_font(),
                )])?;
            }
            root.present()?;
            Ok(())
        };
        if let Err(e) = draw() {
            tracing::warn!(error = %e, "could not draw the sweep plot");
            return None;
        }
        Some(())
    }

    /// `{"strategies": {NAME: {...}}, "skipped": {...}, "metric": ...}` on one line.
    pub fn json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Writes `table.md` and `results.json` into `dir`, and with a sweep `sweep.svg` and
    /// `sweep.png`.
    pub fn write(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir)
            .map_err(|e| GatewayError::io(format!("creating {}", dir.display()), e))?;
        let mut files = vec![("table.md", self.table()), ("results.json", self.json())];
        if let Some(svg) = self.sweep_svg() {
            files.push(("sweep.svg", svg));
        }
        for (file, text) in files {
            let path = dir.join(file);
            std::fs::write(&path, text)
                .map_err(|e| GatewayError::io(format!("writing {}", path.display()), e))?;
        }
        if self.sweep.is_some() {
            let path = dir.join("sweep.png");
            if self.sweep_png(&path).is_none() {
                return Err(GatewayError::Internal(format!(
                    "could not draw {}",
                    path.display()
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cats() -> Vec<String> {
        vec!["reasoning".into(), "sop".into()]
    }

    fn file(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("eval.jsonl");
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("{e}"));
        (dir, path)
    }

    #[test]
    fn the_shipped_smollm2_eval_file_reads_with_keywords_on_every_general_item() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/eval/smollm2/hybrid.jsonl");
        let items = read_eval_file(&path, &cats()).unwrap();
        let general: Vec<&EvalItem> = items.iter().filter(|i| i.label == 0).collect();
        assert!(general.len() >= 60 && items.len() - general.len() >= 40);
        for item in general {
            let keywords = item.keywords.as_ref().unwrap();
            // The reference answer is right by its own keywords.
            assert_eq!(item.score_generated(&item.reference), 1.0, "{item:?}");
            assert!(!keywords.is_empty());
        }
    }

    #[test]
    fn the_paired_bootstrap_brackets_the_mean_and_sees_noise() {
        // A clear win: the interval excludes 0.
        let a = vec![1.0; 40];
        let b: Vec<f64> = (0..40).map(|i| f64::from(u8::from(i % 4 == 0))).collect();
        let d = paired_bootstrap(&a, &b, 7).unwrap();
        assert!(
            (d.mean - 0.75).abs() < 1e-12 && d.low > 0.5 && d.high <= 1.0,
            "{d:?}"
        );
        // One item apart of 40: the interval holds 0.
        let mut c = a.clone();
        c[3] = 0.0;
        let d = paired_bootstrap(&c, &a, 7).unwrap();
        assert!(d.low < 0.0 && d.high >= 0.0 && d.low <= d.mean, "{d:?}");
        assert_eq!(paired_bootstrap(&c, &a, 7), Some(d), "seeded");
        assert!(paired_bootstrap(&[], &[], 7).is_none());
        assert!(paired_bootstrap(&[1.0], &[1.0, 0.0], 7).is_none());
    }

    #[test]
    fn eval_files_are_checked_line_by_line() {
        let good = r#"{"prompt": "12 + 7?", "reference": "The answer is 19.", "label": 0}

{"prompt": "Pick", "reference": "b", "label": 1, "choices": ["a", "b"], "answer": 1}
"#;
        let (_d, p) = file(good);
        let items = read_eval_file(&p, &cats()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(items.len(), 2);
        for (text, needle) in [
            ("", "no items"),
            ("{\"prompt\": \"x\", \"label\": 0}", ":1: not an eval item"),
            (
                "{\"prompt\": \"x\", \"reference\": \"y\", \"label\": 2}",
                "`label` 2",
            ),
            (
                "{\"prompt\": \" \", \"reference\": \"y\", \"label\": 0}",
                "`prompt` is empty",
            ),
            (
                "{\"prompt\": \"x\", \"reference\": \"y\", \"label\": 0, \"answer\": 1}",
                "go together",
            ),
            (
                "{\"prompt\": \"x\", \"reference\": \"y\", \"label\": 0, \"choices\": [\"a\", \"b\"], \"answer\": 2}",
                "`answer` 2",
            ),
            ("not json", ":1:"),
        ] {
            let (_d, p) = file(text);
            let e = read_eval_file(&p, &cats()).err().map(|e| e.to_string());
            let e = e.unwrap_or_default();
            assert!(e.contains(needle), "{text:?}: {e}");
        }
        let e = read_eval_file(Path::new("/nonexistent/eval.jsonl"), &cats())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("/nonexistent/eval.jsonl"), "{e}");
    }

    #[test]
    fn items_are_scored_by_their_kind() {
        let reasoning = EvalItem {
            prompt: "12 + 7?".into(),
            reference: "12 + 7 = 19. The answer is 19.".into(),
            label: 0,
            choices: None,
            answer: None,
            keywords: None,
        };
        assert_eq!(reasoning.score("The answer is 19."), 1.0);
        assert_eq!(reasoning.score("The answer is 18."), 0.0);
        let choice = EvalItem {
            prompt: "Which?".into(),
            reference: String::new(),
            label: 1,
            choices: Some(vec!["refund the order".into(), "reset the password".into()]),
            answer: Some(1),
            keywords: None,
        };
        assert_eq!(choice.score("First, reset your password."), 1.0);
        assert_eq!(choice.score("We refund the order."), 0.0);
        // A short-answer item with keywords is scored on them, generated or not.
        let short = EvalItem {
            prompt: "Capital of France?".into(),
            reference: "The capital of France is Paris.".into(),
            label: 0,
            choices: Some(vec!["Lyon".into(), "Paris".into()]),
            answer: Some(1),
            keywords: Some(vec!["paris".into()]),
        };
        assert_eq!(short.score_generated("It is Paris."), 1.0);
        assert_eq!(short.score_generated("It is Lyon, the capital."), 0.0);
        // A procedure is scored by token F1 against its reference, not through its choices.
        let f1 = choice.score_generated("reset the password");
        assert_eq!(f1, protocol::quality::score("reset the password", ""));
    }
}

//! Scoring a model on held-out question files: what a small model's quality can be seen
//! in.
//!
//! Each line of an eval file is `{"id", "category", "prompt", "reference", "choices"?,
//! "answer"?}` (`data/eval/smollm2/`). Per item:
//! - the mean negative log-likelihood per token of the reference answer (and the
//!   end-of-turn token) after the chat-formatted prompt;
//! - with `choices`: multiple choice by log-likelihood — the choice whose tokens have the
//!   lowest mean NLL wins (length-normalised, so long choices are not penalised);
//! - when asked: a greedy answer, scored by token-F1 and ROUGE-L against the reference.
//!
//! Results are aggregated per category.

use std::collections::BTreeMap;
use std::path::Path;

use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

use crate::error::{ExpertError, Result};
use crate::forge::answer;
use crate::fusion::{Fusion, score_continuations};
use crate::loader::LoadedModel;
use crate::quality::{rouge_l, token_f1};

/// One eval item.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalItem {
    pub id: String,
    pub category: String,
    pub prompt: String,
    pub reference: String,
    #[serde(default)]
    pub choices: Option<Vec<String>>,
    /// Index of the correct choice.
    #[serde(default)]
    pub answer: Option<usize>,
    /// Accepted short answers (`hybrid_inference` scores generated answers on them; here
    /// they are read and kept, and answers are scored by token F1 and ROUGE-L).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keywords: Option<Vec<String>>,
}

/// Reads an eval file (JSON lines; blank lines skipped). Errors name the file and line.
pub fn read_items(path: &Path) -> Result<Vec<EvalItem>> {
    let text = std::fs::read_to_string(path).map_err(|e| ExpertError::io(path, e))?;
    let mut items = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |m: String| ExpertError::model(path, format!("line {}: {m}", n + 1));
        let item: EvalItem = serde_json::from_str(line).map_err(|e| bad(e.to_string()))?;
        if item.prompt.trim().is_empty() || item.reference.trim().is_empty() {
            return Err(bad("empty prompt or reference".into()));
        }
        match (&item.choices, item.answer) {
            (None, None) => {}
            (Some(c), Some(a)) if a < c.len() && c.len() >= 2 => {}
            _ => {
                return Err(bad(
                    "`choices` (two or more) and `answer` (an index into them) come together"
                        .into(),
                ));
            }
        }
        items.push(item);
    }
    if items.is_empty() {
        return Err(ExpertError::model(path, "no items"));
    }
    Ok(items)
}

/// Mean NLL per token of each continuation, as the whole answer (its end-of-turn token
/// included) to the chat-formatted `prompt`: the prompt is fed once and each continuation
/// is teacher-forced from it ([`score_continuations`] with the model alone).
pub fn continuation_nll(
    model: &LoadedModel,
    prompt: &str,
    continuations: &[&str],
) -> Result<Vec<f64>> {
    let prompt = model.user_prompt_ids(prompt)?;
    let ids: Vec<Vec<u32>> = continuations
        .iter()
        .map(|c| model.answer_ids(c))
        .collect::<Result<_>>()?;
    Ok(score_continuations(&Fusion::Single(model), &prompt, &ids)?
        .iter()
        .map(|lp| -lp.iter().map(|&x| f64::from(x)).sum::<f64>() / lp.len() as f64)
        .collect())
}

/// The scores of one item.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ItemScore {
    pub id: String,
    pub category: String,
    pub reference_nll: f64,
    /// Whether the likeliest choice was the correct one.
    pub choice_correct: Option<bool>,
    pub generated: Option<String>,
    pub token_f1: Option<f64>,
    pub rouge_l: Option<f64>,
}

/// Aggregates of one category.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CategoryScore {
    pub category: String,
    pub items: usize,
    pub reference_nll: f64,
    pub choice_accuracy: Option<f64>,
    pub token_f1: Option<f64>,
    pub rouge_l: Option<f64>,
}

/// Everything [`evaluate`] measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EvalScores {
    pub categories: Vec<CategoryScore>,
    pub items: Vec<ItemScore>,
}

/// Scores `model` on `items`; with `generate` set, also generates up to that many tokens
/// per item (greedy) and scores the text.
pub fn evaluate(
    model: &LoadedModel,
    items: &[EvalItem],
    generate: Option<usize>,
) -> Result<EvalScores> {
    let bar = ProgressBar::new(items.len() as u64).with_style(
        ProgressStyle::with_template(
            "{prefix:>12} {bar:40} {pos}/{len} items [{elapsed_precise}<{eta_precise}]",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_prefix(model.name.clone());
    let mut scores = Vec::with_capacity(items.len());
    for item in items {
        // The reference and the choices in one call (the reference is often a choice).
        let mut texts = vec![item.reference.as_str()];
        if let Some(choices) = &item.choices {
            texts.extend(
                choices
                    .iter()
                    .map(String::as_str)
                    .filter(|c| *c != item.reference),
            );
        }
        let nll = continuation_nll(model, &item.prompt, &texts)?;
        let of = |text: &str| nll[texts.iter().position(|t| *t == text).unwrap_or(0)];
        let reference_nll = nll[0];
        let choice_correct = match (&item.choices, item.answer) {
            (Some(choices), Some(answer)) => {
                let best = choices
                    .iter()
                    .map(|c| of(c))
                    .enumerate()
                    .min_by(|a, b| a.1.total_cmp(&b.1))
                    .map(|(i, _)| i);
                Some(best == Some(answer))
            }
            _ => None,
        };
        let generated = generate
            .map(|max| answer(model, &item.prompt, max))
            .transpose()?;
        scores.push(ItemScore {
            id: item.id.clone(),
            category: item.category.clone(),
            reference_nll,
            choice_correct,
            token_f1: generated.as_deref().map(|g| token_f1(g, &item.reference)),
            rouge_l: generated.as_deref().map(|g| rouge_l(g, &item.reference)),
            generated,
        });
        bar.inc(1);
    }
    bar.finish_and_clear();
    let mut by: BTreeMap<&str, Vec<&ItemScore>> = BTreeMap::new();
    for s in &scores {
        by.entry(s.category.as_str()).or_default().push(s);
    }
    let mean = |xs: Vec<f64>| (!xs.is_empty()).then(|| xs.iter().sum::<f64>() / xs.len() as f64);
    let categories = by
        .into_iter()
        .map(|(category, s)| CategoryScore {
            category: category.to_string(),
            items: s.len(),
            reference_nll: mean(s.iter().map(|x| x.reference_nll).collect()).unwrap_or(f64::NAN),
            choice_accuracy: mean(
                s.iter()
                    .filter_map(|x| x.choice_correct.map(|c| f64::from(u8::from(c))))
                    .collect(),
            ),
            token_f1: mean(s.iter().filter_map(|x| x.token_f1).collect()),
            rouge_l: mean(s.iter().filter_map(|x| x.rouge_l).collect()),
        })
        .collect();
    Ok(EvalScores {
        categories,
        items: scores,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_smollm2_eval_files_read() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/eval/smollm2");
        let general = read_items(&dir.join("general.jsonl")).unwrap();
        assert!(general.len() >= 60);
        assert!(general.iter().all(|i| i.keywords.is_some()));
        assert!(read_items(&dir.join("sop.jsonl")).unwrap().len() >= 40);
    }
}

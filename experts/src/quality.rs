//! Quality metrics against exact references.
//!
//! - Reasoning: exact match of the final answer (the value after "The answer is" /
//!   "答案是", see [`crate::corpus::extract_final_answer`]).
//! - SOP: token-level F1 between the answer and the reference procedure (SQuAD-style bag
//!   of tokens), where a token is a lower-cased run of Latin letters/digits or a single CJK
//!   character, so English and Chinese are scored alike.

use std::collections::HashMap;

use crate::corpus::extract_final_answer;

fn is_cjk(c: char) -> bool {
    matches!(c as u32, 0x3400..=0x4dbf | 0x4e00..=0x9fff | 0xf900..=0xfaff | 0x20000..=0x2ffff)
}

/// Splits text into scoring tokens.
pub fn score_tokens(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    for c in text.chars() {
        if is_cjk(c) {
            if !word.is_empty() {
                out.push(std::mem::take(&mut word));
            }
            out.push(c.to_string());
        } else if c.is_alphanumeric() {
            word.extend(c.to_lowercase());
        } else if !word.is_empty() {
            out.push(std::mem::take(&mut word));
        }
    }
    if !word.is_empty() {
        out.push(word);
    }
    out
}

/// Token-level F1 in [0, 1].
pub fn token_f1(prediction: &str, reference: &str) -> f64 {
    let p = score_tokens(prediction);
    let r = score_tokens(reference);
    if p.is_empty() || r.is_empty() {
        return if p.is_empty() && r.is_empty() {
            1.0
        } else {
            0.0
        };
    }
    let mut counts: HashMap<&str, i64> = HashMap::new();
    for t in &r {
        *counts.entry(t).or_default() += 1;
    }
    let mut common = 0;
    for t in &p {
        if let Some(c) = counts.get_mut(t.as_str())
            && *c > 0
        {
            *c -= 1;
            common += 1;
        }
    }
    if common == 0 {
        return 0.0;
    }
    let precision = common as f64 / p.len() as f64;
    let recall = common as f64 / r.len() as f64;
    2.0 * precision * recall / (precision + recall)
}

/// 1 when the final answers match, else 0.
pub fn answer_match(prediction: &str, reference: &str) -> f64 {
    match (
        extract_final_answer(prediction),
        extract_final_answer(reference),
    ) {
        (Some(a), Some(b)) if a == b => 1.0,
        _ => 0.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f1_of_identical_and_disjoint() {
        assert_eq!(token_f1("1. Verify the order.", "1. verify the ORDER"), 1.0);
        assert_eq!(token_f1("abc", "xyz"), 0.0);
        let f = token_f1("核实订单号", "核实订单");
        assert!(f > 0.8 && f < 1.0);
    }

    #[test]
    fn answers_are_compared_by_final_value() {
        assert_eq!(
            answer_match("12 + 7 = 19. The answer is 19.", "The answer is 19."),
            1.0
        );
        assert_eq!(answer_match("The answer is 18.", "The answer is 19."), 0.0);
        assert_eq!(answer_match("no idea", "The answer is 19."), 0.0);
    }
}

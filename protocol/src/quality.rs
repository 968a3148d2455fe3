//! Quality metrics against exact references: pure text, shared by the expert crate (forge
//! evaluation) and the gateway (`hybrid_inference --eval_file`), which must not depend on
//! candle.
//!
//! - Reasoning: exact match of the final answer (the value after "The answer is" /
//!   "答案是", see [`extract_final_answer`]).
//! - SOP: token-level F1 between the answer and the reference procedure (SQuAD-style bag
//!   of tokens), where a token is a lower-cased run of Latin letters/digits or a single CJK
//!   character, so English and Chinese are scored alike.
//! - [`score`] picks one per item: answer match when the reference states a final answer,
//!   token F1 otherwise.

use std::collections::HashMap;

/// The final answer the metric compares for reasoning: what follows the FIRST
/// `answer is` (any case) / `答案是` / `答案为` / `答案：` marker. A number there is returned
/// normalised (leading `+` and thousands separators dropped, e.g. `1,000` → `1000`); otherwise
/// the text up to the next sentence or clause end (`.`, `。`, `,`, `，`, `!`, `?`, `;`, newline),
/// trimmed, e.g. a name. The first marker counts because a trained model states its answer
/// once and anything after it is run-on text. `None` when there is no marker or nothing after it.
pub fn extract_final_answer(text: &str) -> Option<String> {
    // ASCII lowercasing keeps byte offsets, so positions found in `lower` index `text`.
    let lower = text.to_ascii_lowercase();
    let (pos, len) = ["answer is", "答案是", "答案为", "答案："]
        .iter()
        .filter_map(|marker| lower.find(marker).map(|pos| (pos, marker.len())))
        .min_by_key(|&(pos, _)| pos)?;
    let rest =
        text[pos + len..].trim_start_matches(|c: char| c.is_whitespace() || c == ':' || c == '：');
    if let Some(number) = leading_number(rest) {
        return Some(number);
    }
    let end = rest
        .find(['.', '。', '\n', ',', '，', '!', '！', '?', '？', ';', '；'])
        .unwrap_or(rest.len());
    let answer = rest[..end].trim();
    (!answer.is_empty()).then(|| answer.to_owned())
}

/// A number at the start of `s` (optional sign, digits with optional `,` thousands separators
/// and an optional decimal part), normalised; `None` if `s` does not start with one.
fn leading_number(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut i = 0;
    let mut out = String::new();
    match bytes.first() {
        Some(b'-') => {
            out.push('-');
            i = 1;
        }
        Some(b'+') => i = 1,
        _ => {}
    }
    let digits_start = i;
    while i < bytes.len() {
        let c = bytes[i];
        if c.is_ascii_digit() {
            out.push(char::from(c));
            i += 1;
        } else if c == b',' && i > digits_start && bytes.get(i + 1).is_some_and(u8::is_ascii_digit)
        {
            i += 1;
        } else {
            break;
        }
    }
    if i == digits_start {
        return None;
    }
    if bytes.get(i) == Some(&b'.') && bytes.get(i + 1).is_some_and(u8::is_ascii_digit) {
        out.push('.');
        i += 1;
        while let Some(&c) = bytes.get(i) {
            if !c.is_ascii_digit() {
                break;
            }
            out.push(char::from(c));
            i += 1;
        }
    }
    Some(out)
}

/// The score of one answer in [0, 1]: [`answer_match`] when the reference states a final
/// answer (reasoning), else [`token_f1`] (procedures and free text).
pub fn score(prediction: &str, reference: &str) -> f64 {
    if extract_final_answer(reference).is_some() {
        answer_match(prediction, reference)
    } else {
        token_f1(prediction, reference)
    }
}

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

/// ROUGE-L F1 in [0, 1]: the longest common subsequence of the two token sequences
/// ([`score_tokens`]), as an F-measure of its precision and recall.
pub fn rouge_l(prediction: &str, reference: &str) -> f64 {
    let p = score_tokens(prediction);
    let r = score_tokens(reference);
    if p.is_empty() || r.is_empty() {
        return if p.is_empty() && r.is_empty() {
            1.0
        } else {
            0.0
        };
    }
    // One row of the LCS table at a time.
    let mut prev = vec![0usize; r.len() + 1];
    let mut row = vec![0usize; r.len() + 1];
    for a in &p {
        for (j, b) in r.iter().enumerate() {
            row[j + 1] = if a == b {
                prev[j] + 1
            } else {
                row[j].max(prev[j + 1])
            };
        }
        std::mem::swap(&mut prev, &mut row);
    }
    let lcs = prev[r.len()];
    if lcs == 0 {
        return 0.0;
    }
    let precision = lcs as f64 / p.len() as f64;
    let recall = lcs as f64 / r.len() as f64;
    2.0 * precision * recall / (precision + recall)
}

/// 1 when one of `keywords` (accepted short answers, e.g. `["8", "eight"]`) occurs in the
/// prediction as a whole run of scoring tokens ([`score_tokens`]: case, punctuation and
/// spacing do not matter, "paris" does not match "comparison"), else 0.
pub fn keyword_match(prediction: &str, keywords: &[String]) -> f64 {
    let text = score_tokens(prediction);
    let hit = keywords.iter().any(|k| {
        let k = score_tokens(k);
        !k.is_empty() && text.windows(k.len()).any(|w| w == k.as_slice())
    });
    f64::from(u8::from(hit))
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
    fn keywords_match_whole_token_runs() {
        let k = |s: &[&str]| s.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(keyword_match("The capital is Paris.", &k(&["paris"])), 1.0);
        assert_eq!(keyword_match("A comparison of cities", &k(&["paris"])), 0.0);
        assert_eq!(
            keyword_match("It's Carbon-Dioxide!", &k(&["carbon dioxide"])),
            1.0
        );
        assert_eq!(
            keyword_match("carbon and dioxide", &k(&["carbon dioxide"])),
            0.0
        );
        assert_eq!(keyword_match("eight legs", &k(&["8", "eight"])), 1.0);
        assert_eq!(keyword_match("18 legs", &k(&["8", "eight"])), 0.0);
        assert_eq!(keyword_match("anything", &k(&["", " "])), 0.0);
        assert_eq!(keyword_match("首都是巴黎", &k(&["巴黎"])), 1.0);
    }

    #[test]
    fn rouge_l_follows_the_longest_common_subsequence() {
        assert_eq!(rouge_l("a b c d", "a b c d"), 1.0);
        assert_eq!(rouge_l("x y", "a b"), 0.0);
        assert_eq!(rouge_l("", ""), 1.0);
        assert_eq!(rouge_l("", "a"), 0.0);
        // LCS "a c d" (3) of 4 predicted and 5 reference tokens.
        let f = rouge_l("a x c d", "a b c y d");
        let (p, r) = (3.0 / 4.0, 3.0 / 5.0);
        assert!((f - 2.0 * p * r / (p + r)).abs() < 1e-12);
        // Order matters, unlike token-F1.
        assert!(rouge_l("d c b a", "a b c d") < token_f1("d c b a", "a b c d"));
    }

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

    #[test]
    fn score_picks_the_metric_by_the_reference() {
        assert_eq!(
            score("so the answer is 19", "7 + 12 = 19. The answer is 19."),
            1.0
        );
        assert_eq!(score("The answer is 18", "The answer is 19."), 0.0);
        let f = score(
            "1. Verify the order. 2. Refund.",
            "1. Verify the order. 2. Ship.",
        );
        assert!(f > 0.5 && f < 1.0, "{f}");
    }

    #[test]
    fn extract_final_answer_cases() {
        let cases = [
            ("12 + 7 = 19. The answer is 19.", Some("19")),
            ("12 + 7 = 19。答案是19。", Some("19")),
            ("the answer is: 1,000 apples", Some("1000")),
            ("The answer is -5.", Some("-5")),
            ("The answer is 2.5.", Some("2.5")),
            (
                "From tallest to shortest: Amy, Ben, Tom. The answer is Amy.",
                Some("Amy"),
            ),
            ("从高到矮：小明、小红、小刚。答案是小明。", Some("小明")),
            ("The answer is 7. The answer is 8.", Some("7")),
            ("答案为 42", Some("42")),
            ("no marker 42", None),
            ("The answer is", None),
        ];
        for (text, want) in cases {
            assert_eq!(extract_final_answer(text).as_deref(), want, "{text}");
        }
    }
}

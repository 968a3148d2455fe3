//! Labelled query data: the seed's `{"query": "...", "label": 0}` JSON lines.

use serde::{Deserialize, Serialize};

/// One labelled query. `label` is the category index from the config
/// (0 = reasoning, 1 = sop by default). Other fields on the line (a reference
/// answer, say) are ignored, so eval files can carry more; `prompt` is accepted for
/// `query`, so `hybrid_inference` eval files (`{"prompt", "reference", "label"}`) read too.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabeledQuery {
    #[serde(alias = "prompt")]
    pub query: String,
    pub label: usize,
}

use std::path::Path;

use crate::error::{ClassifierError, Result};

/// Parses JSON-lines text of labelled queries. Blank lines are skipped; any other line that
/// is not valid UTF-8 or not a `{"query", "label"}` object fails with its line number.
pub fn parse_jsonl(bytes: &[u8], path: &Path) -> Result<Vec<LabeledQuery>> {
    let mut out = Vec::new();
    for (i, line) in bytes.split(|&b| b == b'\n').enumerate() {
        let err = |message: String| ClassifierError::Data {
            path: path.to_path_buf(),
            line: i + 1,
            message,
        };
        let line = std::str::from_utf8(line)
            .map_err(|e| err(format!("invalid UTF-8 ({e})")))?
            .trim();
        if line.is_empty() {
            continue;
        }
        let q: LabeledQuery = serde_json::from_str(line).map_err(|e| err(e.to_string()))?;
        if q.query.trim().is_empty() {
            return Err(err("empty query".into()));
        }
        out.push(q);
    }
    Ok(out)
}

/// Reads a JSON-lines file of labelled queries.
pub fn read_jsonl(path: impl AsRef<Path>) -> Result<Vec<LabeledQuery>> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| ClassifierError::io(path, e))?;
    parse_jsonl(&bytes, path)
}

/// Writes labelled queries as JSON lines.
pub fn write_jsonl(path: impl AsRef<Path>, items: &[LabeledQuery]) -> Result<()> {
    let path = path.as_ref();
    let mut text = String::new();
    for q in items {
        let line =
            serde_json::to_string(q).map_err(|e| ClassifierError::Training(e.to_string()))?;
        text.push_str(&line);
        text.push('\n');
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| ClassifierError::io(dir, e))?;
    }
    std::fs::write(path, text).map_err(|e| ClassifierError::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_line() {
        let bytes = b"{\"query\":\"a\",\"label\":0}\n\n{\"query\":\"b\",\"label\":\"x\"}\n";
        let e = parse_jsonl(bytes, Path::new("f.jsonl"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("f.jsonl:3:"), "{e}");
        let bytes = b"{\"query\":\"a\",\"label\":0}\n{\"query\":\"\xff\xfe\",\"label\":0}\n";
        let e = parse_jsonl(bytes, Path::new("f.jsonl"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("f.jsonl:2:") && e.contains("UTF-8"), "{e}");
    }

    #[test]
    fn extra_fields_are_allowed() {
        let bytes = "{\"query\":\"退款\",\"label\":1,\"reference\":\"x\"}\n".as_bytes();
        let q = parse_jsonl(bytes, Path::new("f")).unwrap();
        assert_eq!(q[0].label, 1);
        // An eval file of hybrid_inference names the text `prompt`.
        let bytes = "{\"prompt\":\"12 + 7?\",\"reference\":\"19\",\"label\":0}\n".as_bytes();
        let q = parse_jsonl(bytes, Path::new("f")).unwrap();
        assert_eq!((q[0].query.as_str(), q[0].label), ("12 + 7?", 0));
        let e = parse_jsonl(b"{\"label\":0}\n", Path::new("f"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("query"), "{e}");
    }
}

//! Labelled queries from the gateway's feedback store (`gateway.feedback_db`, SQLite), for
//! online learning: `train_classifier --from_feedback FILE`.
//!
//! Each rating of an answer says something about the category it was routed by: `+1`
//! confirms the category (the query is a training example of it); `-1` rejects it, which
//! with two categories names the other one and with more names none (such rows are
//! skipped and counted). Rows whose category is not one of the config's are skipped too.

use std::path::Path;

use crate::data::LabeledQuery;
use crate::error::{ClassifierError, Result};

/// What the feedback store yielded.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FeedbackExamples {
    pub examples: Vec<LabeledQuery>,
    /// Ratings read.
    pub rows: usize,
    /// Rows that gave no label (a rejection among 3+ categories, an unknown category).
    pub skipped: usize,
}

fn db_error(path: &Path, e: impl std::fmt::Display) -> ClassifierError {
    ClassifierError::Data {
        path: path.to_path_buf(),
        line: 0,
        message: format!("feedback database: {e}"),
    }
}

/// Reads every rating of the feedback database at `path` (opened read-only).
pub fn read_feedback(path: &Path, categories: &[String]) -> Result<FeedbackExamples> {
    if !path.is_file() {
        return Err(db_error(path, "no such file"));
    }
    let conn = rusqlite::Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| db_error(path, e))?;
    let mut stmt = conn
        .prepare("SELECT query, category, rating FROM feedback ORDER BY id")
        .map_err(|e| db_error(path, e))?;
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })
        .map_err(|e| db_error(path, e))?;
    let mut out = FeedbackExamples::default();
    for row in rows {
        let (query, category, rating) = row.map_err(|e| db_error(path, e))?;
        out.rows += 1;
        let routed = categories.iter().position(|c| *c == category);
        let label = match (routed, rating) {
            (Some(i), 1) => Some(i),
            (Some(i), -1) if categories.len() == 2 => Some(1 - i),
            _ => None,
        };
        match label {
            Some(label) if !query.trim().is_empty() => {
                out.examples.push(LabeledQuery { query, label });
            }
            _ => out.skipped += 1,
        }
    }
    Ok(out)
}

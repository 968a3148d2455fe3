//! Feedback: ratings of answers, kept in SQLite for the classifier's online learning.
//!
//! A rating names a response id. The gateway remembers the query and route of its most
//! recent answers ([`RecentResponses`], bounded) so a rating is stored with what it rates:
//! the query text, the classification and the route.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::Mutex;

use rusqlite::{Connection, params};
use serde::{Deserialize, Serialize};

use crate::error::{GatewayError, Result};

/// How many recent responses can be rated.
pub const RECENT_RESPONSES: usize = 10_000;

/// What the gateway remembers of one answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResponseRecord {
    pub query: String,
    pub category: String,
    pub confidence: f32,
    pub hint_source: String,
    pub decision: String,
    pub experts: Vec<String>,
    pub mode: String,
}

/// A bounded map of response id → record; the oldest entries go first.
#[derive(Debug)]
pub struct RecentResponses {
    map: HashMap<String, ResponseRecord>,
    order: VecDeque<String>,
    capacity: usize,
}

impl RecentResponses {
    pub fn new(capacity: usize) -> Self {
        Self {
            map: HashMap::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    pub fn insert(&mut self, id: String, record: ResponseRecord) {
        if self.map.insert(id.clone(), record).is_none() {
            self.order.push_back(id);
        }
        while self.order.len() > self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.map.remove(&old);
            }
        }
    }

    pub fn get(&self, id: &str) -> Option<&ResponseRecord> {
        self.map.get(id)
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// One stored rating.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeedbackRow {
    pub id: i64,
    pub response_id: String,
    pub rating: i8,
    pub comment: Option<String>,
    pub created_at: i64,
    pub record: ResponseRecord,
}

/// The SQLite database of ratings.
#[derive(Debug)]
pub struct FeedbackStore {
    conn: Mutex<Connection>,
}

impl FeedbackStore {
    /// Opens (creating it and its directory if needed) the database at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir)
                .map_err(|e| GatewayError::io(format!("creating {}", dir.display()), e))?;
        }
        let conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             CREATE TABLE IF NOT EXISTS feedback (
                 id INTEGER PRIMARY KEY AUTOINCREMENT,
                 response_id TEXT NOT NULL,
                 rating INTEGER NOT NULL CHECK (rating IN (-1, 1)),
                 comment TEXT,
                 query TEXT NOT NULL,
                 category TEXT NOT NULL,
                 confidence REAL NOT NULL,
                 hint_source TEXT NOT NULL,
                 decision TEXT NOT NULL,
                 experts TEXT NOT NULL,
                 mode TEXT NOT NULL,
                 created_at INTEGER NOT NULL
             );",
        )?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    /// Stores a rating; returns its row id.
    pub fn insert(
        &self,
        response_id: &str,
        rating: i8,
        comment: Option<&str>,
        record: &ResponseRecord,
        created_at: i64,
    ) -> Result<i64> {
        let experts = serde_json::to_string(&record.experts)
            .map_err(|e| GatewayError::Internal(e.to_string()))?;
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        conn.execute(
            "INSERT INTO feedback (response_id, rating, comment, query, category, confidence,
                 hint_source, decision, experts, mode, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            params![
                response_id,
                rating,
                comment,
                record.query,
                record.category,
                f64::from(record.confidence),
                record.hint_source,
                record.decision,
                experts,
                record.mode,
                created_at
            ],
        )?;
        Ok(conn.last_insert_rowid())
    }

    /// Every stored rating, oldest first.
    pub fn all(&self) -> Result<Vec<FeedbackRow>> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let mut stmt = conn.prepare(
            "SELECT id, response_id, rating, comment, query, category, confidence, hint_source,
                    decision, experts, mode, created_at
             FROM feedback ORDER BY id",
        )?;
        let rows = stmt.query_map([], |r| {
            let experts: String = r.get(9)?;
            let confidence: f64 = r.get(6)?;
            Ok(FeedbackRow {
                id: r.get(0)?,
                response_id: r.get(1)?,
                rating: r.get(2)?,
                comment: r.get(3)?,
                created_at: r.get(11)?,
                record: ResponseRecord {
                    query: r.get(4)?,
                    category: r.get(5)?,
                    confidence: confidence as f32,
                    hint_source: r.get(7)?,
                    decision: r.get(8)?,
                    experts: serde_json::from_str(&experts).unwrap_or_default(),
                    mode: r.get(10)?,
                },
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(q: &str) -> ResponseRecord {
        ResponseRecord {
            query: q.into(),
            category: "sop".into(),
            confidence: 0.9,
            hint_source: "server".into(),
            decision: "single".into(),
            experts: vec!["sft-sop".into()],
            mode: "single".into(),
        }
    }

    #[test]
    fn recent_responses_are_bounded() {
        let mut r = RecentResponses::new(2);
        r.insert("a".into(), record("1"));
        r.insert("b".into(), record("2"));
        r.insert("c".into(), record("3"));
        assert_eq!(r.len(), 2);
        assert!(r.get("a").is_none());
        assert_eq!(r.get("c").map(|x| x.query.as_str()), Some("3"));
    }

    #[test]
    fn ratings_round_trip_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/feedback.sqlite");
        let store = FeedbackStore::open(&path).unwrap();
        store
            .insert("chatcmpl-1", 1, Some("good"), &record("q"), 7)
            .unwrap();
        drop(store);
        let rows = FeedbackStore::open(&path).unwrap().all().unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].rating, 1);
        assert_eq!(rows[0].record, record("q"));
        assert_eq!(rows[0].comment.as_deref(), Some("good"));
    }
}

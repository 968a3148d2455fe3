//! The client's routing hint and its verification.
//!
//! A browser or edge worker classifies the query where it is typed and sends the result as
//! `route_hint`. The hint is advisory: in trust mode `none` it is ignored, in `any` it is
//! taken as sent, in `signed` it is taken only with a valid, fresh HMAC-SHA256 signature
//! from a configured edge key. So a forged low confidence cannot buy fusion (2× compute).
//!
//! The signed string is ([`signing_payload`]):
//!
//! ```text
//! category|confidence|classifier_version|timestamp|sha256_hex(canonical_json(messages))
//! ```
//!
//! - `confidence` is written as the shortest decimal that reads back as the same f64
//!   (Rust's `{}`; JavaScript's `String(x)` agrees for values ≥ 1e-6);
//! - `timestamp` is Unix seconds;
//! - `canonical_json(messages)` is the JSON array of `{"content": ..., "role": ...}`
//!   objects (keys sorted, no whitespace), as `JSON.stringify(messages.map(m =>
//!   ({content: m.content, role: m.role})))` writes it;
//! - the signature is the lower-case hex HMAC-SHA256 of the payload with the secret of
//!   `key_id`.

use std::collections::BTreeMap;

use hmac::{Hmac, Mac};
use protocol::ChatMessage;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

type HmacSha256 = Hmac<Sha256>;

/// `route_hint` in a chat request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteHint {
    /// Category name (one of `hybrid.categories`).
    pub category: String,
    /// The classifier's confidence in `category`, in [0, 1].
    pub confidence: f64,
    /// `Classifier::version()` of the client's classifier.
    pub classifier_version: String,
    /// Hex HMAC-SHA256 of the signing payload (trust mode `signed`).
    #[serde(default)]
    pub signature: Option<String>,
    /// Which `gateway.edge_keys` entry signed it.
    #[serde(default)]
    pub key_id: Option<String>,
    /// Unix seconds when it was signed.
    #[serde(default)]
    pub timestamp: Option<i64>,
}

/// Why a signed hint was not accepted (the label of `gateway_hint_rejected_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HintRejection {
    Unsigned,
    UnknownKey,
    Stale,
    BadSignature,
}

impl HintRejection {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unsigned => "unsigned",
            Self::UnknownKey => "unknown_key",
            Self::Stale => "stale",
            Self::BadSignature => "bad_signature",
        }
    }
}

/// The canonical JSON of the messages (keys sorted, no whitespace).
pub fn canonical_messages_json(messages: &[ChatMessage]) -> String {
    #[derive(Serialize)]
    struct Canon<'a> {
        content: &'a str,
        role: &'a str,
    }
    let canon: Vec<Canon<'_>> = messages
        .iter()
        .map(|m| Canon {
            content: &m.content,
            role: &m.role,
        })
        .collect();
    // Serialising plain strings into a String cannot fail.
    serde_json::to_string(&canon).unwrap_or_default()
}

/// `sha256_hex(canonical_json(messages))`.
pub fn messages_digest(messages: &[ChatMessage]) -> String {
    hex::encode(Sha256::digest(canonical_messages_json(messages).as_bytes()))
}

/// The string that is signed.
pub fn signing_payload(
    category: &str,
    confidence: f64,
    classifier_version: &str,
    timestamp: i64,
    messages: &[ChatMessage],
) -> String {
    format!(
        "{category}|{confidence}|{classifier_version}|{timestamp}|{}",
        messages_digest(messages)
    )
}

fn mac(secret: &str) -> HmacSha256 {
    // HMAC takes keys of any length.
    <HmacSha256 as Mac>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"))
}

/// Signs a hint as an edge worker would (used by tests, tools and edge code in Rust).
pub fn sign(
    secret: &str,
    category: &str,
    confidence: f64,
    classifier_version: &str,
    timestamp: i64,
    messages: &[ChatMessage],
) -> String {
    let mut m = mac(secret);
    m.update(
        signing_payload(
            category,
            confidence,
            classifier_version,
            timestamp,
            messages,
        )
        .as_bytes(),
    );
    hex::encode(m.finalize().into_bytes())
}

/// Checks a hint's signature and freshness against the edge keys.
pub fn verify(
    hint: &RouteHint,
    messages: &[ChatMessage],
    edge_keys: &BTreeMap<String, String>,
    max_age_s: u64,
    now_unix_s: i64,
) -> Result<(), HintRejection> {
    let (Some(signature), Some(key_id), Some(timestamp)) =
        (&hint.signature, &hint.key_id, hint.timestamp)
    else {
        return Err(HintRejection::Unsigned);
    };
    let secret = edge_keys.get(key_id).ok_or(HintRejection::UnknownKey)?;
    let age = now_unix_s.saturating_sub(timestamp);
    if age.unsigned_abs() > max_age_s {
        return Err(HintRejection::Stale);
    }
    let sig = hex::decode(signature).map_err(|_| HintRejection::BadSignature)?;
    let mut m = mac(secret);
    m.update(
        signing_payload(
            &hint.category,
            hint.confidence,
            &hint.classifier_version,
            timestamp,
            messages,
        )
        .as_bytes(),
    );
    // Constant-time comparison.
    m.verify_slice(&sig)
        .map_err(|_| HintRejection::BadSignature)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SECRET: &str = "0123456789abcdef-edge";

    fn keys() -> BTreeMap<String, String> {
        BTreeMap::from([("edge1".to_string(), SECRET.to_string())])
    }

    fn msgs(texts: &[(String, String)]) -> Vec<ChatMessage> {
        texts
            .iter()
            .map(|(role, content)| ChatMessage {
                role: role.clone(),
                content: content.clone(),
            })
            .collect()
    }

    fn signed(cat: &str, conf: f64, ver: &str, ts: i64, messages: &[ChatMessage]) -> RouteHint {
        RouteHint {
            category: cat.into(),
            confidence: conf,
            classifier_version: ver.into(),
            signature: Some(sign(SECRET, cat, conf, ver, ts, messages)),
            key_id: Some("edge1".into()),
            timestamp: Some(ts),
        }
    }

    #[test]
    fn canonical_json_sorts_keys() {
        let m = msgs(&[("user".into(), "a\"b\n中".into())]);
        assert_eq!(
            canonical_messages_json(&m),
            r#"[{"content":"a\"b\n中","role":"user"}]"#
        );
    }

    #[test]
    fn valid_stale_unknown_key_and_unsigned() {
        let m = msgs(&[("user".into(), "hello".into())]);
        let h = signed("sop", 0.25, "rules-1", 1_000, &m);
        assert_eq!(verify(&h, &m, &keys(), 300, 1_100), Ok(()));
        assert_eq!(
            verify(&h, &m, &keys(), 300, 1_301),
            Err(HintRejection::Stale)
        );
        let mut k = h.clone();
        k.key_id = Some("other".into());
        assert_eq!(
            verify(&k, &m, &keys(), 300, 1_100),
            Err(HintRejection::UnknownKey)
        );
        let mut u = h;
        u.signature = None;
        assert_eq!(
            verify(&u, &m, &keys(), 300, 1_100),
            Err(HintRejection::Unsigned)
        );
    }

    fn flip(s: &str, at: usize, to: u8) -> String {
        let mut b = s.as_bytes().to_vec();
        let i = at % b.len();
        b[i] = if b[i] == to { to ^ 1 } else { to };
        String::from_utf8(b).unwrap_or_else(|_| s.to_string() + "x")
    }

    proptest! {
        #[test]
        fn any_single_byte_change_is_rejected(
            cat in "[a-z]{1,12}",
            conf in 0.0f64..=1.0,
            ver in "[a-z0-9-]{1,20}",
            ts in 1_000_000i64..2_000_000,
            texts in proptest::collection::vec(("(user|system|assistant)", "[ -~]{1,40}"), 1..4),
            field in 0usize..6,
            at in 0usize..64,
            to in 0x20u8..0x7f,
        ) {
            let m = msgs(&texts);
            let h = signed(&cat, conf, &ver, ts, &m);
            prop_assert_eq!(verify(&h, &m, &keys(), 300, ts), Ok(()));
            let mut h2 = h.clone();
            let mut m2 = m.clone();
            match field {
                0 => h2.category = flip(&cat, at, to),
                1 => {
                    let c = flip(&conf.to_string(), at, b'0' + to % 10);
                    h2.confidence = c.parse().unwrap_or(conf + 1.0);
                    if h2.confidence == conf {
                        h2.confidence = conf + 1e-9;
                    }
                }
                2 => h2.classifier_version = flip(&ver, at, to),
                3 => h2.timestamp = Some(ts + 1 + (at as i64 % 200)),
                4 => {
                    let i = at % m2.len();
                    m2[i].content = flip(&m2[i].content, at / 4, to);
                }
                _ => {
                    let sig = h.signature.clone().unwrap_or_default();
                    h2.signature = Some(flip(&sig, at, b"0123456789abcdef"[to as usize % 16]));
                }
            }
            prop_assert!(verify(&h2, &m2, &keys(), 300, ts).is_err());
        }
    }
}

//! Query classification for the hybrid router.
//!
//! A query goes in; a category (reasoning, SOP, or more from the config) and a calibrated
//! confidence come out. The gateway routes on that confidence: at or above the threshold
//! one expert answers alone, below it experts are fused.
//!
//! Three kinds sit behind the [`Classifier`] trait:
//! - [`RuleBasedClassifier`]: weighted Chinese/English keyword tables, no training;
//! - [`LearnedClassifier`]: hashed character n-grams and words into a softmax layer,
//!   trained natively ([`train`]) and temperature-scaled;
//! - [`CombinedClassifier`]: both of them, mixed by a layer fitted on validation data
//!   (the default).
//!
//! The same code compiles to `wasm32-unknown-unknown`; the `wasm` module is a thin
//! `#[wasm_bindgen]` layer over it, so the browser classifies exactly as the server does.

pub mod combined;
pub mod data;
pub mod error;
pub mod features;
pub mod learned;
pub mod metrics;
pub mod query_classifier;
pub mod rules;
pub mod sample;
pub mod train;

#[cfg(feature = "native")]
pub mod config;
#[cfg(feature = "native")]
pub mod feedback;

#[cfg(target_arch = "wasm32")]
pub mod wasm;

pub use combined::CombinedClassifier;
pub use error::{ClassifierError, Result};
pub use learned::LearnedClassifier;
pub use query_classifier::{Classification, Classifier, ClassifierKind, MAX_INPUT_CHARS};
pub use rules::{RuleBasedClassifier, RuleSet};

//! Checkpoints round-trip, and every kind of broken checkpoint is a clear error.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use classifier::features::FeatureConfig;
use classifier::learned::{META_FILE, WEIGHTS_FILE};
use classifier::train::{TrainOptions, train};
use classifier::{Classifier, LearnedClassifier};

fn cats(n: usize) -> Vec<String> {
    ["reasoning", "sop", "sales"][..n]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

fn small_model() -> LearnedClassifier {
    let data = classifier::sample::generate(3, 60);
    let (t, v) = data.split_at(90);
    let opts = TrainOptions {
        features: FeatureConfig {
            buckets: 1024,
            ..FeatureConfig::default()
        },
        ..TrainOptions::default()
    };
    train(t, v, &cats(2), &opts, |_, _| {}).unwrap().0
}

fn load_err(dir: &std::path::Path) -> String {
    LearnedClassifier::load(dir).unwrap_err().to_string()
}

#[test]
fn round_trip_gives_identical_answers() {
    let m = small_model();
    let dir = tempfile::tempdir().unwrap();
    m.save(dir.path()).unwrap();
    let back = LearnedClassifier::load(dir.path()).unwrap();
    assert_eq!(back.version(), m.version());
    for q in ["退款怎么申请", "what is 17% of 240?"] {
        assert_eq!(back.classify(q).unwrap(), m.classify(q).unwrap());
    }
}

#[test]
fn truncated_and_corrupted_weights_are_errors() {
    let m = small_model();
    let dir = tempfile::tempdir().unwrap();
    m.save(dir.path()).unwrap();
    let wpath = dir.path().join(WEIGHTS_FILE);
    let bytes = std::fs::read(&wpath).unwrap();

    std::fs::write(&wpath, &bytes[..bytes.len() / 2]).unwrap();
    let e = load_err(dir.path());
    assert!(e.contains("bad safetensors"), "{e}");

    std::fs::write(&wpath, b"").unwrap();
    assert!(load_err(dir.path()).contains("bad safetensors"));

    let mut garbled = bytes.clone();
    for b in garbled.iter_mut().take(16) {
        *b = 0xff;
    }
    std::fs::write(&wpath, &garbled).unwrap();
    assert!(load_err(dir.path()).contains("safetensors"));

    // NaN weights: valid container, invalid model.
    let mut nan = bytes.clone();
    let n = nan.len();
    nan[n - 4..].copy_from_slice(&f32::NAN.to_le_bytes());
    std::fs::write(&wpath, &nan).unwrap();
    let e = load_err(dir.path());
    assert!(e.contains("NaN"), "{e}");
}

#[test]
fn metadata_that_disagrees_with_the_weights_is_an_error() {
    let m = small_model();
    let dir = tempfile::tempdir().unwrap();
    m.save(dir.path()).unwrap();
    let mpath = dir.path().join(META_FILE);
    let meta = std::fs::read_to_string(&mpath).unwrap();

    std::fs::write(&mpath, meta.replace("1024", "2048")).unwrap();
    let e = load_err(dir.path());
    assert!(e.contains("shape"), "{e}");

    std::fs::write(&mpath, &meta[..meta.len() / 2]).unwrap();
    assert!(load_err(dir.path()).contains(META_FILE));

    std::fs::write(&mpath, meta.replace("\"temperature\"", "\"temprature\"")).unwrap();
    assert!(load_err(dir.path()).contains("temprature"));

    std::fs::remove_file(&mpath).unwrap();
    assert!(load_err(dir.path()).contains("missing"));
}

#[test]
fn checkpoint_must_match_the_config() {
    let m = small_model();
    let dir = tempfile::tempdir().unwrap();
    m.save(dir.path()).unwrap();
    let features = m.meta().features.clone();
    assert!(LearnedClassifier::load_checked(dir.path(), &cats(2), &features).is_ok());

    let e = LearnedClassifier::load_checked(dir.path(), &cats(3), &features)
        .unwrap_err()
        .to_string();
    assert!(e.contains("categories") && e.contains("(3)"), "{e}");

    let other = FeatureConfig {
        char_ngram_max: 4,
        ..features
    };
    let e = LearnedClassifier::load_checked(dir.path(), &cats(2), &other)
        .unwrap_err()
        .to_string();
    assert!(e.contains("features"), "{e}");
}

#[test]
fn bytes_api_matches_directory_api() {
    let m = small_model();
    let meta = serde_json::to_vec(m.meta()).unwrap();
    let w = m.weights_bytes().unwrap();
    let b = LearnedClassifier::from_bytes(&meta, &w).unwrap();
    assert_eq!(b.version(), m.version());
    assert!(LearnedClassifier::from_bytes(b"{}", &w).is_err());
    assert!(LearnedClassifier::from_bytes(&meta, b"\x00\x01").is_err());
}

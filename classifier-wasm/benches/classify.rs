//! Native classification latency, short (~20 chars) and long (~2,000 chars) queries, for
//! both classifier kinds. The learned classifier is trained in-process on the sample set
//! (a few hundred milliseconds), so the bench needs no checkpoint on disk.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use classifier::train::{TrainOptions, train};
use classifier::{Classifier, RuleBasedClassifier, RuleSet};
use criterion::{Criterion, criterion_group, criterion_main};

fn bench(c: &mut Criterion) {
    let data = classifier::sample::generate(42, 350);
    let (train_set, val_set) = data.split_at(data.len() * 85 / 100);
    let categories = vec!["reasoning".to_string(), "sop".to_string()];
    let (learned, _) = train(
        train_set,
        val_set,
        &categories,
        &TrainOptions::default(),
        |_, _| {},
    )
    .expect("training on the sample set");
    let rules = RuleBasedClassifier::new(RuleSet::default_rules().expect("default rules"))
        .expect("default rules compile");

    let short = "How do I reset my pwd";
    let paragraph = "My order arrived damaged and I would like to know the steps for a refund or \
                     an exchange; also, if the price was 240 dollars with a 15 percent discount, \
                     how much should I get back? 我的订单损坏了，请问退款流程是什么？ ";
    let long: String = paragraph.chars().cycle().take(2000).collect();

    let mut group = c.benchmark_group("classify");
    group.bench_function("learned/short", |b| {
        b.iter(|| learned.classify(black_box(short)))
    });
    group.bench_function("learned/long", |b| {
        b.iter(|| learned.classify(black_box(&long)))
    });
    group.bench_function("rule_based/short", |b| {
        b.iter(|| rules.classify(black_box(short)))
    });
    group.bench_function("rule_based/long", |b| {
        b.iter(|| rules.classify(black_box(&long)))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

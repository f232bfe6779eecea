//! A BERT-family sentence encoder on the CPU: the model directory of a Hugging Face /
//! sentence-transformers export, run in plain Rust on `ndarray`'s matrix multiply.
//!
//! A batch packs its sequences' tokens into one matrix with no padding: the dense
//! layers (most of the work) run once over every token of the batch; attention runs
//! per sequence and head.

use std::{
    path::Path,
    sync::atomic::{AtomicBool, Ordering},
};

use ndarray::{Array2, ArrayView2, ArrayViewMut2, Axis, Slice, linalg::general_mat_mul};
use serde::Deserialize;

use super::{safetensors, wordpiece::Tokenizer};

#[derive(Debug, Clone, Deserialize)]
struct Config {
    hidden_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    intermediate_size: usize,
    max_position_embeddings: usize,
    #[serde(default = "one")]
    type_vocab_size: usize,
    #[serde(default = "eps")]
    layer_norm_eps: f32,
    #[serde(default = "gelu")]
    hidden_act: String,
    #[serde(default)]
    architectures: Vec<String>,
}

fn one() -> usize {
    1
}
fn eps() -> f32 {
    1e-12
}
fn gelu() -> String {
    "gelu".into()
}

/// sentence-transformers' `sentence_bert_config.json`.
#[derive(Debug, Default, Deserialize)]
struct SentenceConfig {
    max_seq_length: Option<usize>,
    #[serde(default)]
    do_lower_case: bool,
}

/// One entry of sentence-transformers' `modules.json`.
#[derive(Debug, Deserialize)]
struct Module {
    path: String,
    #[serde(rename = "type")]
    kind: String,
}

/// How token vectors become one sentence vector (`1_Pooling/config.json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pooling {
    Mean,
    Cls,
    Max,
    MeanSqrtLen,
}

impl Pooling {
    fn read(bytes: &[u8]) -> Result<Self, String> {
        let v: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| format!("pooling config: {e}"))?;
        let on = |k: &str| v.get(k).and_then(serde_json::Value::as_bool) == Some(true);
        let modes: Vec<Self> = [
            ("pooling_mode_mean_tokens", Self::Mean),
            ("pooling_mode_cls_token", Self::Cls),
            ("pooling_mode_max_tokens", Self::Max),
            ("pooling_mode_mean_sqrt_len_tokens", Self::MeanSqrtLen),
        ]
        .into_iter()
        .filter(|(k, _)| on(k))
        .map(|(_, m)| m)
        .collect();
        match modes[..] {
            [] => Ok(Self::Mean),
            [m] => Ok(m),
            _ => Err(format!(
                "pooling config: {} pooling modes at once (one is built in)",
                modes.len()
            )),
        }
    }
}

struct Linear {
    /// `[out, inputs]`, as stored.
    w: Array2<f32>,
    b: Vec<f32>,
}

impl Linear {
    /// `x W^T + b` for every row of `x`.
    fn apply(&self, x: ArrayView2<'_, f32>) -> Array2<f32> {
        let mut y = Array2::from_shape_fn((x.nrows(), self.b.len()), |(_, j)| self.b[j]);
        general_mat_mul(1.0, &x, &self.w.t(), 1.0, &mut y);
        y
    }
}

struct Norm {
    g: Vec<f32>,
    b: Vec<f32>,
}

struct Layer {
    /// Query, key and value in one `[3h, h]` product.
    qkv: Linear,
    attn_out: Linear,
    attn_norm: Norm,
    up: Linear,
    down: Linear,
    out_norm: Norm,
}

/// A cross-encoder's head: `[CLS]` through the pooler (dense, tanh), then the
/// classifier's one logit.
struct Head {
    pooler: Linear,
    classifier: Linear,
}

/// A loaded encoder.
pub struct Bert {
    config: Config,
    tokenizer: Tokenizer,
    /// Longest input in tokens, `[CLS]` and `[SEP]` included.
    max_len: usize,
    /// sentence-transformers lower-cases the text before the tokenizer sees it.
    lower_input: bool,
    pooling: Pooling,
    normalize: bool,
    words: Vec<f32>,
    positions: Vec<f32>,
    types: Vec<f32>,
    norm: Norm,
    layers: Vec<Layer>,
    /// Set for a cross-encoder (`BertForSequenceClassification`): it scores pairs.
    head: Option<Head>,
}

impl std::fmt::Debug for Bert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bert")
            .field("hidden", &self.config.hidden_size)
            .field("layers", &self.config.num_hidden_layers)
            .field("max_len", &self.max_len)
            .field("pooling", &self.pooling)
            .field("cross_encoder", &self.head.is_some())
            .finish_non_exhaustive()
    }
}

impl Bert {
    /// Loads the model in `dir`: `config.json`, `model.safetensors`, and
    /// `tokenizer.json` or `vocab.txt`; `tokenizer_config.json`,
    /// `sentence_bert_config.json`, `modules.json` and the pooling config when present.
    pub fn load(dir: &Path) -> Result<Self, String> {
        let path = |name: &str| dir.join(name);
        let read = |name: &str| {
            std::fs::read(path(name)).map_err(|e| format!("{}: {e}", path(name).display()))
        };
        let json = |name: &str| -> Result<Option<serde_json::Value>, String> {
            if !path(name).exists() {
                return Ok(None);
            }
            serde_json::from_slice(&read(name)?)
                .map(Some)
                .map_err(|e| format!("{name}: {e}"))
        };
        let config: Config = serde_json::from_slice(&read("config.json")?)
            .map_err(|e| format!("config.json: {e}"))?;
        if config.hidden_size == 0
            || config.num_attention_heads == 0
            || !config
                .hidden_size
                .is_multiple_of(config.num_attention_heads)
        {
            return Err(format!(
                "config.json: hidden_size {} is not a multiple of num_attention_heads {}",
                config.hidden_size, config.num_attention_heads
            ));
        }
        if !matches!(
            config.hidden_act.as_str(),
            "gelu" | "gelu_new" | "gelu_pytorch_tanh"
        ) {
            return Err(format!(
                "config.json: hidden_act {} (gelu, gelu_new and gelu_pytorch_tanh are built in)",
                config.hidden_act
            ));
        }
        let tokenizer = if path("tokenizer.json").exists() {
            Tokenizer::from_json(&read("tokenizer.json")?)?
        } else {
            let lower = json("tokenizer_config.json")?
                .and_then(|v| v.get("do_lower_case").and_then(serde_json::Value::as_bool))
                .unwrap_or(true);
            let vocab =
                String::from_utf8(read("vocab.txt")?).map_err(|e| format!("vocab.txt: {e}"))?;
            Tokenizer::new(&vocab, lower)?
        };
        let sentence: SentenceConfig = match json("sentence_bert_config.json")? {
            Some(v) => {
                serde_json::from_value(v).map_err(|e| format!("sentence_bert_config.json: {e}"))?
            }
            None => SentenceConfig::default(),
        };
        let max_len = sentence
            .max_seq_length
            .unwrap_or(config.max_position_embeddings)
            .min(config.max_position_embeddings);
        // modules.json names the pooling directory and whether vectors are normalised;
        // without it: `1_Pooling`, normalised (what cosine scores need).
        let (pooling_dir, normalize) = match json("modules.json")? {
            Some(v) => {
                let modules: Vec<Module> =
                    serde_json::from_value(v).map_err(|e| format!("modules.json: {e}"))?;
                let kind = |k: &str| modules.iter().find(|m| m.kind.ends_with(k));
                if let Some(m) = modules.iter().find(|m| {
                    !["models.Transformer", "models.Pooling", "models.Normalize"]
                        .iter()
                        .any(|k| m.kind.ends_with(k))
                }) {
                    return Err(format!(
                        "modules.json: module {} (Transformer, Pooling and Normalize are built in)",
                        m.kind
                    ));
                }
                (
                    kind("models.Pooling").map(|m| m.path.clone()),
                    kind("models.Normalize").is_some(),
                )
            }
            None => (Some("1_Pooling".to_owned()), true),
        };
        let pooling = match pooling_dir.map(|d| format!("{d}/config.json")) {
            Some(p) if path(&p).exists() => Pooling::read(&read(&p)?)?,
            _ => Pooling::Mean,
        };
        let t = safetensors::parse(read("model.safetensors")?)?;
        // BertFor* exports put the encoder under `bert.`.
        let prefix = if t.contains("bert.embeddings.word_embeddings.weight") {
            "bert."
        } else {
            ""
        };
        let mut w = Weights {
            t,
            prefix,
            h: config.hidden_size,
        };
        let h = config.hidden_size;
        let words = w.take(
            "embeddings.word_embeddings.weight",
            &[tokenizer.vocab_size(), h],
        )?;
        let positions = w.take(
            "embeddings.position_embeddings.weight",
            &[config.max_position_embeddings, h],
        )?;
        let types = w.take(
            "embeddings.token_type_embeddings.weight",
            &[config.type_vocab_size, h],
        )?;
        let emb_norm = w.norm("embeddings.LayerNorm")?;
        let mut layers = Vec::new();
        for i in 0..config.num_hidden_layers {
            let p = format!("encoder.layer.{i}");
            let inter = config.intermediate_size;
            let (q, k, v) = (
                w.linear(&format!("{p}.attention.self.query"), h, h)?,
                w.linear(&format!("{p}.attention.self.key"), h, h)?,
                w.linear(&format!("{p}.attention.self.value"), h, h)?,
            );
            layers.push(Layer {
                qkv: Linear {
                    w: ndarray::concatenate(Axis(0), &[q.w.view(), k.w.view(), v.w.view()])
                        .map_err(|e| format!("{p}: {e}"))?,
                    b: [q.b, k.b, v.b].concat(),
                },
                attn_out: w.linear(&format!("{p}.attention.output.dense"), h, h)?,
                attn_norm: w.norm(&format!("{p}.attention.output.LayerNorm"))?,
                up: w.linear(&format!("{p}.intermediate.dense"), inter, h)?,
                down: w.linear(&format!("{p}.output.dense"), h, inter)?,
                out_norm: w.norm(&format!("{p}.output.LayerNorm"))?,
            });
        }
        let head = if config
            .architectures
            .iter()
            .any(|a| a.ends_with("ForSequenceClassification"))
        {
            let pooler = w.linear("pooler.dense", h, h)?;
            w.prefix = "";
            let classifier = w.linear("classifier", 1, h).map_err(|e| {
                format!("{e} (a cross-encoder with one score, num_labels 1, is built in)")
            })?;
            Some(Head { pooler, classifier })
        } else {
            None
        };
        Ok(Self {
            config,
            tokenizer,
            max_len,
            lower_input: sentence.do_lower_case,
            pooling,
            normalize,
            words,
            positions,
            types,
            norm: emb_norm,
            layers,
            head,
        })
    }

    /// Whether this is a cross-encoder, which scores (query, document) pairs and does
    /// not embed.
    pub fn is_cross_encoder(&self) -> bool {
        self.head.is_some()
    }

    /// Embedding size.
    pub fn dimensions(&self) -> usize {
        self.config.hidden_size
    }

    /// Token ids of `text` as the model sees it: `[CLS] … [SEP]`, cut at the model's
    /// longest input.
    pub fn tokens(&self, text: &str) -> Vec<u32> {
        self.tokenizer.encode(&self.input(text), self.max_len)
    }

    /// Token ids of each (query, document) pair, `[CLS] q [SEP] d [SEP]`, and how
    /// many belong to the query's segment.
    pub fn pairs(&self, query: &str, documents: &[String]) -> Vec<(Vec<u32>, usize)> {
        let q = self.tokenizer.pieces(&self.input(query), usize::MAX);
        documents
            .iter()
            .map(|d| {
                let d = self.tokenizer.pieces(&self.input(d), usize::MAX);
                self.tokenizer.pair(&q, &d, self.max_len)
            })
            .collect()
    }

    fn input<'t>(&self, text: &'t str) -> std::borrow::Cow<'t, str> {
        if self.lower_input {
            text.to_lowercase().into()
        } else {
            text.into()
        }
    }

    /// The embedding of `ids` (normalised when the model's modules say so).
    pub fn embed(&self, ids: &[u32]) -> Vec<f32> {
        let never = AtomicBool::new(false);
        self.embed_batch(&[ids], &never)
            .and_then(|mut v| v.pop())
            .unwrap_or_default()
    }

    /// The embeddings of a batch of token sequences, in order; `None` when `stop` was
    /// set (it is checked before every layer).
    pub fn embed_batch(&self, seqs: &[&[u32]], stop: &AtomicBool) -> Option<Vec<Vec<f32>>> {
        let inputs: Vec<(&[u32], usize)> = seqs.iter().map(|s| (*s, s.len())).collect();
        let x = self.encode(&inputs, stop)?;
        let mut out = Vec::with_capacity(seqs.len());
        let mut at = 0;
        for seq in seqs {
            let n = seq.len();
            let t = x.slice_axis(Axis(0), Slice::from(at..at + n));
            at += n;
            let mut pooled: Vec<f32> = match self.pooling {
                Pooling::Cls => t.row(0).to_vec(),
                Pooling::Max => t
                    .columns()
                    .into_iter()
                    .map(|c| c.fold(f32::NEG_INFINITY, |a, b| a.max(*b)))
                    .collect(),
                Pooling::Mean | Pooling::MeanSqrtLen => {
                    let div = if self.pooling == Pooling::Mean {
                        n as f32
                    } else {
                        (n as f32).sqrt()
                    };
                    t.sum_axis(Axis(0)).iter().map(|v| v / div).collect()
                }
            };
            if self.normalize {
                let norm = pooled.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
                pooled.iter_mut().for_each(|v| *v /= norm);
            }
            out.push(pooled);
        }
        Some(out)
    }

    /// A cross-encoder's score (its logit: higher is more relevant) of each pair
    /// from [`Bert::pairs`]; `None` when `stop` was set, or this is not a
    /// cross-encoder.
    pub fn score_batch(&self, pairs: &[(&[u32], usize)], stop: &AtomicBool) -> Option<Vec<f32>> {
        let head = self.head.as_ref()?;
        let x = self.encode(pairs, stop)?;
        let mut at = 0;
        let mut cls = Array2::<f32>::zeros((pairs.len(), self.config.hidden_size));
        for ((ids, _), mut row) in pairs.iter().zip(cls.rows_mut()) {
            row.assign(&x.row(at));
            at += ids.len();
        }
        let mut pooled = head.pooler.apply(cls.view());
        pooled.mapv_inplace(f32::tanh);
        Some(head.classifier.apply(pooled.view()).column(0).to_vec())
    }

    /// The last hidden states of every token of `inputs` (ids, and how many of them
    /// are in the first segment), packed one after another.
    fn encode(&self, inputs: &[(&[u32], usize)], stop: &AtomicBool) -> Option<Array2<f32>> {
        let h = self.config.hidden_size;
        let lens: Vec<usize> = inputs.iter().map(|(s, _)| s.len()).collect();
        let total: usize = lens.iter().sum();
        let mut x = Array2::<f32>::zeros((total, h));
        let mut rows = x.rows_mut().into_iter();
        for (seq, first) in inputs {
            for (pos, id) in seq.iter().enumerate() {
                let segment =
                    usize::from(pos >= *first).min(self.config.type_vocab_size.saturating_sub(1));
                let (Some(mut row), Some(w), Some(p), Some(t)) = (
                    rows.next(),
                    self.words.get(*id as usize * h..(*id as usize + 1) * h),
                    self.positions.get(pos * h..(pos + 1) * h),
                    self.types.get(segment * h..(segment + 1) * h),
                ) else {
                    continue;
                };
                for (j, v) in row.iter_mut().enumerate() {
                    *v = w[j] + p[j] + t[j];
                }
            }
        }
        self.layer_norm(&mut x, &self.norm);
        for layer in &self.layers {
            if stop.load(Ordering::Relaxed) {
                return None;
            }
            x = self.layer(layer, &x, &lens);
        }
        Some(x)
    }

    fn layer(&self, l: &Layer, x: &Array2<f32>, lens: &[usize]) -> Array2<f32> {
        let h = self.config.hidden_size;
        let heads = self.config.num_attention_heads;
        let d = h / heads;
        let qkv = l.qkv.apply(x.view());
        let scale = 1.0 / (d as f32).sqrt();
        let mut ctx = Array2::<f32>::zeros(x.raw_dim());
        let mut at = 0;
        for &n in lens {
            let seq = qkv.slice_axis(Axis(0), Slice::from(at..at + n));
            let mut scores = Array2::<f32>::zeros((n, n));
            for head in 0..heads {
                let c = head * d;
                let q = cols(seq, c, d);
                let k = cols(seq, h + c, d);
                let v = cols(seq, 2 * h + c, d);
                general_mat_mul(scale, &q, &k.t(), 0.0, &mut scores);
                for mut row in scores.rows_mut() {
                    if let Some(r) = row.as_slice_mut() {
                        softmax(r);
                    }
                }
                let mut out = block_mut(&mut ctx, at, n, c, d);
                general_mat_mul(1.0, &scores, &v, 0.0, &mut out);
            }
            at += n;
        }
        let mut a = l.attn_out.apply(ctx.view());
        a += x;
        self.layer_norm(&mut a, &l.attn_norm);
        let mut up = l.up.apply(a.view());
        if self.config.hidden_act == "gelu" {
            up.mapv_inplace(gelu_erf);
        } else {
            up.mapv_inplace(gelu_tanh);
        }
        let mut out = l.down.apply(up.view());
        out += &a;
        self.layer_norm(&mut out, &l.out_norm);
        out
    }

    fn layer_norm(&self, x: &mut Array2<f32>, n: &Norm) {
        let h = self.config.hidden_size as f32;
        for mut row in x.rows_mut() {
            let Some(row) = row.as_slice_mut() else {
                continue;
            };
            let mean = row.iter().sum::<f32>() / h;
            let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / h;
            let inv = 1.0 / (var + self.config.layer_norm_eps).sqrt();
            for ((v, g), b) in row.iter_mut().zip(&n.g).zip(&n.b) {
                *v = (*v - mean) * inv * g + b;
            }
        }
    }
}

/// The tensors of a model file, taken out by name with their shapes checked.
struct Weights {
    t: safetensors::File,
    prefix: &'static str,
    h: usize,
}

impl Weights {
    fn take(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>, String> {
        let full = format!("{}{name}", self.prefix);
        let tensor = self.t.tensor(&full)?;
        // The word embeddings may have more rows than the vocabulary (padded exports).
        let fits = tensor.shape == shape
            || (name.ends_with("word_embeddings.weight")
                && tensor.shape.len() == 2
                && tensor.shape[1] == shape[1]
                && tensor.shape[0] >= shape[0]);
        if !fits {
            return Err(format!(
                "{full} has shape {:?}, config says {shape:?}",
                tensor.shape
            ));
        }
        Ok(tensor.data)
    }

    fn norm(&mut self, p: &str) -> Result<Norm, String> {
        Ok(Norm {
            g: self.take(&format!("{p}.weight"), &[self.h])?,
            b: self.take(&format!("{p}.bias"), &[self.h])?,
        })
    }

    fn linear(&mut self, p: &str, out: usize, inputs: usize) -> Result<Linear, String> {
        let w = self.take(&format!("{p}.weight"), &[out, inputs])?;
        Ok(Linear {
            w: Array2::from_shape_vec((out, inputs), w).map_err(|e| format!("{p}: {e}"))?,
            b: self.take(&format!("{p}.bias"), &[out])?,
        })
    }
}

/// Columns `from..from + n` of `a`.
fn cols(a: ArrayView2<'_, f32>, from: usize, n: usize) -> ArrayView2<'_, f32> {
    a.slice_axis_move(Axis(1), Slice::from(from..from + n))
}

/// Rows `row..row + rows`, columns `col..col + n` of `a`.
fn block_mut(
    a: &mut Array2<f32>,
    row: usize,
    rows: usize,
    col: usize,
    n: usize,
) -> ArrayViewMut2<'_, f32> {
    a.slice_axis_mut(Axis(0), Slice::from(row..row + rows))
        .slice_axis_move(Axis(1), Slice::from(col..col + n))
}

fn softmax(s: &mut [f32]) {
    let max = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for v in s.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    s.iter_mut().for_each(|v| *v /= sum);
}

fn gelu_erf(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x / std::f32::consts::SQRT_2))
}

fn gelu_tanh(x: f32) -> f32 {
    0.5 * x * (1.0 + ((2.0 / std::f32::consts::PI).sqrt() * (x + 0.044_715 * x * x * x)).tanh())
}

/// Abramowitz and Stegun 7.1.26 (error below 1.5e-7).
fn erf(x: f32) -> f32 {
    let t = 1.0 / (1.0 + 0.327_591_1 * x.abs());
    let y = 1.0
        - (((((1.061_405_4 * t - 1.453_152_1) * t) + 1.421_413_7) * t - 0.284_496_72) * t
            + 0.254_829_6)
            * t
            * (-x * x).exp();
    y.copysign(x)
}

/// Writes a randomly initialised BERT of the given size into `dir` (config, vocab of
/// `words` plus the special tokens, safetensors): what tests and benchmarks run when
/// no real model can be shipped.
pub fn write_random(
    dir: &Path,
    words: &[&str],
    hidden: usize,
    layers: usize,
    heads: usize,
    intermediate: usize,
    seed: u64,
) -> std::io::Result<()> {
    write(
        dir,
        words,
        (hidden, layers, heads, intermediate),
        seed,
        false,
    )
}

/// [`write_random`] with a cross-encoder's head (`BertForSequenceClassification`:
/// pooler and a one-logit classifier), the layout of `cross-encoder/ms-marco-*`.
pub fn write_random_cross_encoder(
    dir: &Path,
    words: &[&str],
    hidden: usize,
    layers: usize,
    heads: usize,
    intermediate: usize,
    seed: u64,
) -> std::io::Result<()> {
    write(
        dir,
        words,
        (hidden, layers, heads, intermediate),
        seed,
        true,
    )
}

fn write(
    dir: &Path,
    words: &[&str],
    (hidden, layers, heads, intermediate): (usize, usize, usize, usize),
    seed: u64,
    cross: bool,
) -> std::io::Result<()> {
    let mut vocab = vec!["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"];
    vocab.extend_from_slice(words);
    let max_pos = 128;
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("vocab.txt"), vocab.join("\n"))?;
    std::fs::write(
        dir.join("config.json"),
        serde_json::json!({
            "hidden_size": hidden, "num_hidden_layers": layers, "num_attention_heads": heads,
            "intermediate_size": intermediate, "max_position_embeddings": max_pos,
            "type_vocab_size": 2, "vocab_size": vocab.len(), "hidden_act": "gelu",
            "layer_norm_eps": 1e-12, "model_type": "bert",
            "architectures": [if cross { "BertForSequenceClassification" } else { "BertModel" }]
        })
        .to_string(),
    )?;
    // xorshift: deterministic and dependency-free.
    let mut state = seed | 1;
    let mut rand = |n: usize, scale: f32| -> Vec<f32> {
        (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0 * scale
            })
            .collect()
    };
    let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = vec![
        (
            "embeddings.word_embeddings.weight".into(),
            vec![vocab.len(), hidden],
            rand(vocab.len() * hidden, 0.5),
        ),
        (
            "embeddings.position_embeddings.weight".into(),
            vec![max_pos, hidden],
            rand(max_pos * hidden, 0.05),
        ),
        (
            "embeddings.token_type_embeddings.weight".into(),
            vec![2, hidden],
            rand(2 * hidden, 0.05),
        ),
        (
            "embeddings.LayerNorm.weight".into(),
            vec![hidden],
            vec![1.0; hidden],
        ),
        (
            "embeddings.LayerNorm.bias".into(),
            vec![hidden],
            vec![0.0; hidden],
        ),
    ];
    let s = 1.0 / (hidden as f32).sqrt();
    for i in 0..layers {
        let p = format!("encoder.layer.{i}");
        for (name, out, inp) in [
            ("attention.self.query", hidden, hidden),
            ("attention.self.key", hidden, hidden),
            ("attention.self.value", hidden, hidden),
            ("attention.output.dense", hidden, hidden),
            ("intermediate.dense", intermediate, hidden),
            ("output.dense", hidden, intermediate),
        ] {
            tensors.push((
                format!("{p}.{name}.weight"),
                vec![out, inp],
                rand(out * inp, s),
            ));
            tensors.push((format!("{p}.{name}.bias"), vec![out], vec![0.0; out]));
        }
        for norm in ["attention.output.LayerNorm", "output.LayerNorm"] {
            tensors.push((
                format!("{p}.{norm}.weight"),
                vec![hidden],
                vec![1.0; hidden],
            ));
            tensors.push((format!("{p}.{norm}.bias"), vec![hidden], vec![0.0; hidden]));
        }
    }
    if cross {
        tensors.push((
            "pooler.dense.weight".into(),
            vec![hidden, hidden],
            rand(hidden * hidden, s),
        ));
        tensors.push(("pooler.dense.bias".into(), vec![hidden], rand(hidden, 0.1)));
        tensors.push((
            "classifier.weight".into(),
            vec![1, hidden],
            rand(hidden, 1.0),
        ));
        tensors.push(("classifier.bias".into(), vec![1], vec![0.25]));
        // As BertFor* exports name them: the encoder under `bert.`.
        for t in &mut tensors {
            if !t.0.starts_with("classifier") {
                t.0.insert_str(0, "bert.");
            }
        }
    }
    let refs: Vec<(&str, &[usize], &[f32])> = tensors
        .iter()
        .map(|(n, s, d)| (n.as_str(), s.as_slice(), d.as_slice()))
        .collect();
    std::fs::write(dir.join("model.safetensors"), safetensors::write(&refs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_random_model_embeds_to_unit_vectors_and_same_text_same_vector() {
        let dir = tempfile::tempdir().unwrap();
        write_random(
            dir.path(),
            &["the", "cat", "sat", "dog", "ran"],
            32,
            2,
            4,
            64,
            7,
        )
        .unwrap();
        let m = Bert::load(dir.path()).unwrap();
        assert_eq!(m.dimensions(), 32);
        let a = m.embed(&m.tokens("the cat sat"));
        let b = m.embed(&m.tokens("The cat sat"));
        let c = m.embed(&m.tokens("dog ran"));
        assert_eq!(a.len(), 32);
        assert!((a.iter().map(|v| v * v).sum::<f32>() - 1.0).abs() < 1e-4);
        assert_eq!(a, b, "uncased: the same tokens");
        assert_ne!(a, c);
        assert!((erf(0.5) - 0.520_499_9).abs() < 1e-6);
        std::fs::write(dir.path().join("config.json"), r#"{"hidden_size": 30, "num_hidden_layers": 1, "num_attention_heads": 4, "intermediate_size": 8, "max_position_embeddings": 8}"#).unwrap();
        assert!(Bert::load(dir.path()).unwrap_err().contains("multiple"));
    }
}

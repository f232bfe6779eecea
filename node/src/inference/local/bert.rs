//! A BERT-family sentence encoder on the CPU: the model directory of a Hugging Face /
//! sentence-transformers export (`config.json`, `vocab.txt`, `model.safetensors`),
//! run in plain Rust, pooled (mean, or `[CLS]`) and L2-normalised.

use std::path::Path;

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

struct Linear {
    w: Vec<f32>,
    b: Vec<f32>,
    inputs: usize,
}

struct Norm {
    g: Vec<f32>,
    b: Vec<f32>,
}

struct Layer {
    q: Linear,
    k: Linear,
    v: Linear,
    attn_out: Linear,
    attn_norm: Norm,
    up: Linear,
    down: Linear,
    out_norm: Norm,
}

/// A loaded encoder.
pub struct Bert {
    config: Config,
    tokenizer: Tokenizer,
    words: Vec<f32>,
    positions: Vec<f32>,
    types: Vec<f32>,
    norm: Norm,
    layers: Vec<Layer>,
    cls_pooling: bool,
}

impl std::fmt::Debug for Bert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bert")
            .field("hidden", &self.config.hidden_size)
            .field("layers", &self.config.num_hidden_layers)
            .finish_non_exhaustive()
    }
}

impl Bert {
    /// Loads the model in `dir`.
    pub fn load(dir: &Path) -> Result<Self, String> {
        let read = |name: &str| {
            std::fs::read(dir.join(name)).map_err(|e| format!("{}: {e}", dir.join(name).display()))
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
        let lower = read("tokenizer_config.json")
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| v.get("do_lower_case").and_then(serde_json::Value::as_bool))
            .unwrap_or(true);
        let vocab = String::from_utf8(read("vocab.txt")?).map_err(|e| format!("vocab.txt: {e}"))?;
        let tokenizer = Tokenizer::new(&vocab, lower)?;
        let cls_pooling = read("1_Pooling/config.json")
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| {
                v.get("pooling_mode_cls_token")
                    .and_then(serde_json::Value::as_bool)
            })
            .unwrap_or(false);
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
            layers.push(Layer {
                q: w.linear(&format!("{p}.attention.self.query"), h, h)?,
                k: w.linear(&format!("{p}.attention.self.key"), h, h)?,
                v: w.linear(&format!("{p}.attention.self.value"), h, h)?,
                attn_out: w.linear(&format!("{p}.attention.output.dense"), h, h)?,
                attn_norm: w.norm(&format!("{p}.attention.output.LayerNorm"))?,
                up: w.linear(&format!("{p}.intermediate.dense"), inter, h)?,
                down: w.linear(&format!("{p}.output.dense"), h, inter)?,
                out_norm: w.norm(&format!("{p}.output.LayerNorm"))?,
            });
        }
        Ok(Self {
            config,
            tokenizer,
            words,
            positions,
            types,
            norm: emb_norm,
            layers,
            cls_pooling,
        })
    }

    /// Embedding size.
    pub fn dimensions(&self) -> usize {
        self.config.hidden_size
    }

    /// Token ids of `text` as the model sees it.
    pub fn tokens(&self, text: &str) -> Vec<u32> {
        self.tokenizer
            .encode(text, self.config.max_position_embeddings)
    }

    /// The normalised embedding of `ids`.
    pub fn embed(&self, ids: &[u32]) -> Vec<f32> {
        let h = self.config.hidden_size;
        let n = ids.len();
        let mut x = vec![0f32; n * h];
        for (i, id) in ids.iter().enumerate() {
            let w = &self.words[*id as usize * h..][..h];
            let p = &self.positions[i * h..][..h];
            let t = &self.types[..h];
            for (j, v) in x[i * h..][..h].iter_mut().enumerate() {
                *v = w[j] + p[j] + t[j];
            }
        }
        self.layer_norm(&mut x, &self.norm);
        for layer in &self.layers {
            x = self.layer(layer, x, n);
        }
        let mut pooled = if self.cls_pooling {
            x[..h].to_vec()
        } else {
            let mut m = vec![0f32; h];
            for row in x.chunks_exact(h) {
                for (a, b) in m.iter_mut().zip(row) {
                    *a += b;
                }
            }
            m.iter_mut().for_each(|v| *v /= n as f32);
            m
        };
        let norm = pooled.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
        pooled.iter_mut().for_each(|v| *v /= norm);
        pooled
    }

    fn layer(&self, l: &Layer, x: Vec<f32>, n: usize) -> Vec<f32> {
        let h = self.config.hidden_size;
        let heads = self.config.num_attention_heads;
        let d = h / heads;
        let (q, k, v) = (linear(&l.q, &x), linear(&l.k, &x), linear(&l.v, &x));
        let scale = 1.0 / (d as f32).sqrt();
        let mut ctx = vec![0f32; n * h];
        let mut scores = vec![0f32; n];
        for head in 0..heads {
            let off = head * d;
            for i in 0..n {
                let qi = &q[i * h + off..][..d];
                for (j, s) in scores.iter_mut().enumerate() {
                    let kj = &k[j * h + off..][..d];
                    *s = qi.iter().zip(kj).map(|(a, b)| a * b).sum::<f32>() * scale;
                }
                softmax(&mut scores);
                let out = &mut ctx[i * h + off..][..d];
                for (j, p) in scores.iter().enumerate() {
                    let vj = &v[j * h + off..][..d];
                    for (o, vv) in out.iter_mut().zip(vj) {
                        *o += p * vv;
                    }
                }
            }
        }
        let mut a = linear(&l.attn_out, &ctx);
        a.iter_mut().zip(&x).for_each(|(a, x)| *a += x);
        self.layer_norm(&mut a, &l.attn_norm);
        let mut up = linear(&l.up, &a);
        let tanh = self.config.hidden_act != "gelu";
        up.iter_mut()
            .for_each(|v| *v = if tanh { gelu_tanh(*v) } else { gelu_erf(*v) });
        let mut out = linear(&l.down, &up);
        out.iter_mut().zip(&a).for_each(|(o, a)| *o += a);
        self.layer_norm(&mut out, &l.out_norm);
        out
    }

    fn layer_norm(&self, x: &mut [f32], n: &Norm) {
        let h = self.config.hidden_size;
        for row in x.chunks_exact_mut(h) {
            let mean = row.iter().sum::<f32>() / h as f32;
            let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / h as f32;
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
        // The word embeddings may have more rows than vocab.txt (padded exports).
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
        Ok(Linear {
            w: self.take(&format!("{p}.weight"), &[out, inputs])?,
            b: self.take(&format!("{p}.bias"), &[out])?,
            inputs,
        })
    }
}

/// `x W^T + b` for every row of `x`.
fn linear(l: &Linear, x: &[f32]) -> Vec<f32> {
    let out = l.b.len();
    let mut y = Vec::with_capacity(x.len() / l.inputs * out);
    for row in x.chunks_exact(l.inputs) {
        for (o, b) in l.b.iter().enumerate() {
            let w = &l.w[o * l.inputs..][..l.inputs];
            y.push(row.iter().zip(w).map(|(a, b)| a * b).sum::<f32>() + b);
        }
    }
    y
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
            "layer_norm_eps": 1e-12, "model_type": "bert"
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

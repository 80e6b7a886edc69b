//! Loading a Llama-family model from a GGUF file (llama.cpp's format).
//!
//! Tensors are dequantized to f32 (Q4_0, Q4_1, Q8_0, F16, F32 and the other types candle
//! reads) and renamed to Hugging Face names. llama.cpp's converter permutes the rows of
//! `attn_q` and `attn_k` for its adjacent-pair RoPE; we undo it so the model uses Hugging
//! Face's `rotate_half` RoPE and GGUF and safetensors weights are interchangeable.

use super::{LlamaConfig, LoadedModel, ModelSource};
use crate::{Error, Result};
use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::tokenizer::TokenizerFromGguf;
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::Path;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::Tokenizer;

fn err(path: &Path, msg: impl Into<String>) -> Error {
    Error::Model {
        path: path.into(),
        msg: msg.into(),
    }
}

fn meta_u64(ct: &Content, key: &str) -> Option<u64> {
    match ct.metadata.get(key)? {
        Value::U8(v) => Some(*v as u64),
        Value::I8(v) => Some(*v as u64),
        Value::U16(v) => Some(*v as u64),
        Value::I16(v) => Some(*v as u64),
        Value::U32(v) => Some(*v as u64),
        Value::I32(v) => Some(*v as u64),
        Value::U64(v) => Some(*v),
        Value::I64(v) => Some(*v as u64),
        _ => None,
    }
}

fn meta_f64(ct: &Content, key: &str) -> Option<f64> {
    match ct.metadata.get(key)? {
        Value::F32(v) => Some(*v as f64),
        Value::F64(v) => Some(*v),
        _ => meta_u64(ct, key).map(|v| v as f64),
    }
}

fn meta_str<'a>(ct: &'a Content, key: &str) -> Option<&'a str> {
    ct.metadata.get(key)?.to_string().ok().map(|s| s.as_str())
}

/// Reads the GGUF header (metadata and tensor table) only.
pub fn read_content(path: &Path) -> Result<Content> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    Content::read(&mut f).map_err(|e| err(path, format!("not a readable GGUF file: {e}")))
}

/// Architecture hyper-parameters from GGUF metadata (`{arch}.block_count`, …).
pub fn config_from_gguf(path: &Path, ct: &Content) -> Result<LlamaConfig> {
    let arch = meta_str(ct, "general.architecture").unwrap_or("llama");
    if arch != "llama" {
        return Err(err(
            path,
            format!("architecture `{arch}` is not supported yet (supported: llama, which covers Llama, SmolLM2, Mistral)"),
        ));
    }
    let need = |key: &str| -> Result<usize> {
        meta_u64(ct, &format!("{arch}.{key}"))
            .map(|v| v as usize)
            .ok_or_else(|| err(path, format!("missing metadata key `{arch}.{key}`")))
    };
    let n_vocab = match ct.metadata.get("tokenizer.ggml.tokens") {
        Some(Value::Array(a)) => a.len(),
        _ => need("vocab_size")?,
    };
    // The head size the metadata states (RoPE rotates whole heads) must be what the head
    // count makes of the width; a wrong count would otherwise permute q/k rows silently wrong.
    let (hidden, heads) = (need("embedding_length")?, need("attention.head_count")?);
    if let Some(rope) = meta_u64(ct, &format!("{arch}.rope.dimension_count")) {
        if heads == 0 || hidden % heads != 0 || (hidden / heads) as u64 != rope {
            return Err(err(
                path,
                format!(
                    "`{arch}.attention.head_count` = {heads} splits `{arch}.embedding_length` = \
                     {hidden} into heads of {}, but `{arch}.rope.dimension_count` says {rope}: \
                     the metadata disagrees with itself",
                    if heads == 0 {
                        0.0
                    } else {
                        hidden as f64 / heads as f64
                    }
                ),
            ));
        }
    }
    let tied = !ct.tensor_infos.contains_key("output.weight");
    let eos = meta_u64(ct, "tokenizer.ggml.eos_token_id");
    Ok(LlamaConfig {
        vocab_size: n_vocab,
        hidden_size: need("embedding_length")?,
        intermediate_size: need("feed_forward_length")?,
        num_hidden_layers: need("block_count")?,
        num_attention_heads: need("attention.head_count")?,
        num_key_value_heads: meta_u64(ct, &format!("{arch}.attention.head_count_kv"))
            .map(|v| v as usize)
            .unwrap_or(need("attention.head_count")?),
        rope_theta: meta_f64(ct, &format!("{arch}.rope.freq_base")).unwrap_or(10_000.0),
        rms_norm_eps: meta_f64(ct, &format!("{arch}.attention.layer_norm_rms_epsilon"))
            .unwrap_or(1e-5),
        max_position_embeddings: meta_u64(ct, &format!("{arch}.context_length"))
            .map(|v| v as usize)
            .unwrap_or(2048),
        tie_word_embeddings: tied,
        bos_token_id: meta_u64(ct, "tokenizer.ggml.bos_token_id").map(|v| v as u32),
        eos_token_id: eos.map(|v| serde_json::json!(v)),
    })
}

/// Undoes llama.cpp's row permutation of q/k weights: GGUF rows are laid out as
/// (heads, head_dim/2, 2) where Hugging Face has (heads, 2, head_dim/2).
pub fn unpermute_qk(w: &Tensor, n_heads: usize) -> Result<Tensor> {
    let (rows, cols) = w.dims2()?;
    let hd = rows / n_heads;
    Ok(w.reshape((n_heads, hd / 2, 2, cols))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((rows, cols))?)
}

/// The inverse of [`unpermute_qk`] (HF → GGUF layout), used by tests.
pub fn permute_qk(w: &Tensor, n_heads: usize) -> Result<Tensor> {
    let (rows, cols) = w.dims2()?;
    let hd = rows / n_heads;
    Ok(w.reshape((n_heads, 2, hd / 2, cols))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((rows, cols))?)
}

/// Rebuilds the tokenizer from `tokenizer.ggml.*` metadata. candle builds the BPE model and
/// special tokens; for the `smollm` pre-tokenizer (digits split one by one, then byte-level)
/// we set the pre-tokenizer Hugging Face's tokenizer.json uses.
pub fn tokenizer_from_gguf(path: &Path, ct: &Content) -> Result<Tokenizer> {
    let mut tok = Tokenizer::from_gguf(ct)
        .map_err(|e| err(path, format!("cannot rebuild the tokenizer: {e}")))?;
    match meta_str(ct, "tokenizer.ggml.pre") {
        Some("smollm") => {
            let seq = Sequence::new(vec![
                Digits::new(true).into(),
                ByteLevel::new(false, true, true).into(),
            ]);
            tok.with_pre_tokenizer(Some(seq));
        }
        Some("gpt2") | Some("default") | None => {}
        Some(other) if ["qwen2", "llama3", "smaug-bpe", "lfm2"].contains(&other) => {}
        Some(other) => {
            return Err(err(
                path,
                format!("tokenizer pre-tokenizer `{other}` is not supported yet (supported: smollm, gpt2, qwen2, llama3)"),
            ))
        }
    }
    Ok(tok)
}

fn token_string(ct: &Content, key: &str) -> Option<String> {
    let id = meta_u64(ct, key)? as usize;
    match ct.metadata.get("tokenizer.ggml.tokens")? {
        Value::Array(a) => a.get(id)?.to_string().ok().cloned(),
        _ => None,
    }
}

/// Loads a GGUF model, dequantized to `dtype`.
pub fn load(path: &Path, dtype: DType) -> Result<LoadedModel> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let ct =
        Content::read(&mut f).map_err(|e| err(path, format!("not a readable GGUF file: {e}")))?;
    let config = config_from_gguf(path, &ct)?;
    let dev = Device::Cpu;
    let mut get = |name: &str| -> Result<Tensor> {
        let q = ct
            .tensor(&mut f, name, &dev)
            .map_err(|e| err(path, format!("tensor `{name}`: {e}")))?;
        q.dequantize(&dev)
            .map_err(|e| err(path, format!("tensor `{name}`: cannot dequantize: {e}")))
    };
    let mut t: HashMap<String, Tensor> = HashMap::new();
    t.insert(
        "model.embed_tokens.weight".into(),
        get("token_embd.weight")?,
    );
    t.insert("model.norm.weight".into(), get("output_norm.weight")?);
    if ct.tensor_infos.contains_key("output.weight") {
        t.insert("lm_head.weight".into(), get("output.weight")?);
    }
    for i in 0..config.num_hidden_layers {
        let p = format!("model.layers.{i}");
        let g = |n: &str| format!("blk.{i}.{n}.weight");
        let mut qk = |name: String, heads: usize, key: &str| -> Result<Tensor> {
            let w = get(&name)?;
            let rows = w.dims2()?.0;
            if heads == 0 || !rows.is_multiple_of(heads) || !(rows / heads).is_multiple_of(2) {
                return Err(err(
                    path,
                    format!(
                        "tensor `{name}` has {rows} rows, which `llama.{key}` = {heads} heads \
                         cannot split into heads of one even size: the metadata and the weights \
                         disagree"
                    ),
                ));
            }
            unpermute_qk(&w, heads)
        };
        let q = qk(
            g("attn_q"),
            config.num_attention_heads,
            "attention.head_count",
        )?;
        let k = qk(
            g("attn_k"),
            config.num_key_value_heads,
            "attention.head_count_kv",
        )?;
        t.insert(format!("{p}.self_attn.q_proj.weight"), q);
        t.insert(format!("{p}.self_attn.k_proj.weight"), k);
        for (hf, gg) in [
            ("self_attn.v_proj", "attn_v"),
            ("self_attn.o_proj", "attn_output"),
            ("mlp.gate_proj", "ffn_gate"),
            ("mlp.up_proj", "ffn_up"),
            ("mlp.down_proj", "ffn_down"),
            ("input_layernorm", "attn_norm"),
            ("post_attention_layernorm", "ffn_norm"),
        ] {
            t.insert(format!("{p}.{hf}.weight"), get(&g(gg))?);
        }
    }
    let tokenizer = tokenizer_from_gguf(path, &ct)?;
    let chat_template = meta_str(&ct, "tokenizer.chat_template").map(String::from);
    let bos_token = token_string(&ct, "tokenizer.ggml.bos_token_id");
    let eos_token = token_string(&ct, "tokenizer.ggml.eos_token_id");
    let llama = super::Llama::from_tensors(config, t, path.into(), dtype)?;
    let sha256 = super::sha256_files(&[path.into()])?;
    Ok(LoadedModel {
        llama,
        tokenizer,
        chat_template,
        bos_token,
        eos_token,
        source: ModelSource {
            kind: "gguf".into(),
            path: path.into(),
            hf_repo: hf_repo(&ct, &sha256),
            sha256,
        },
    })
}

/// GGUF files whose metadata names no source repository but whose content is known: the
/// reference model that `scripts/fetch-model.sh` pins by this hash.
const KNOWN_FILES: &[(&str, &str)] = &[(
    "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    "HuggingFaceTB/SmolLM2-135M-Instruct",
)];

/// The Hugging Face repository (`org/name`) a GGUF file was converted from: the metadata's
/// `general.source.huggingface.repository`, or a `huggingface.co/org/name` URL in
/// `general.source.repo_url`, `general.source.url`, `general.repo_url` or `general.url`, else
/// [`KNOWN_FILES`] by the file's sha256. `general.base_model.*` is not used: it names the
/// model this one was fine-tuned from, not this one.
pub fn hf_repo(ct: &Content, sha256: &str) -> Option<String> {
    let from_url = |u: &str| {
        let rest = u.split("huggingface.co/").nth(1)?;
        let mut parts = rest.trim_end_matches('/').split('/');
        let (org, name) = (parts.next()?, parts.next()?);
        (!org.is_empty() && !name.is_empty()).then(|| format!("{org}/{name}"))
    };
    let repo = meta_str(ct, "general.source.huggingface.repository")
        .filter(|r| r.split('/').count() == 2)
        .map(String::from);
    repo.or_else(|| {
        [
            "general.source.repo_url",
            "general.source.url",
            "general.repo_url",
            "general.url",
        ]
        .iter()
        .find_map(|k| meta_str(ct, k).and_then(from_url))
    })
    .or_else(|| {
        KNOWN_FILES
            .iter()
            .find(|(h, _)| *h == sha256)
            .map(|(_, r)| r.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::gguf_file::VersionedMagic;

    fn content(meta: &[(&str, &str)]) -> Content {
        Content {
            magic: VersionedMagic::GgufV3,
            metadata: meta
                .iter()
                .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
                .collect(),
            tensor_infos: Default::default(),
            tensor_data_offset: 0,
        }
    }

    #[test]
    fn hf_repo_from_metadata_or_the_known_hash() {
        let repo = |meta: &[(&str, &str)], sha: &str| hf_repo(&content(meta), sha);
        assert_eq!(
            repo(&[("general.source.huggingface.repository", "org/m")], "x"),
            Some("org/m".into())
        );
        assert_eq!(
            repo(
                &[(
                    "general.source.repo_url",
                    "https://huggingface.co/org/m-1B/"
                )],
                "x"
            ),
            Some("org/m-1B".into())
        );
        // The model it was fine-tuned from is not this model.
        assert_eq!(
            repo(
                &[(
                    "general.base_model.0.repo_url",
                    "https://huggingface.co/org/base"
                )],
                "x"
            ),
            None
        );
        assert_eq!(
            repo(&[], KNOWN_FILES[0].0),
            Some("HuggingFaceTB/SmolLM2-135M-Instruct".into())
        );
        assert_eq!(repo(&[("general.name", "Smollm2 135M")], "x"), None);
    }
}

//! Tiny random Llama models with a byte-level tokenizer, for tests that need exact
//! ground truth (finite differences, explicit Hessians) and for fast end-to-end checks.
//! They are real models of the same architecture, only small.

use super::{hf, Llama, LlamaConfig, LoadedModel, ModelSource};
use crate::Result;
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::Path;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Tokenizer};

/// The ChatML template SmolLM2 ships (without its default system prompt).
pub const CHATML_TEMPLATE: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// A config of the given width and depth with GQA (2 query heads per key/value head) and a
/// 259-token vocabulary (256 bytes + 3 ChatML specials).
pub fn config(hidden: usize, layers: usize) -> LlamaConfig {
    LlamaConfig {
        vocab_size: 259,
        hidden_size: hidden,
        intermediate_size: hidden * 2,
        num_hidden_layers: layers,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        rope_theta: 10_000.0,
        rms_norm_eps: 1e-5,
        max_position_embeddings: 512,
        tie_word_embeddings: true,
        bos_token_id: None,
        eos_token_id: Some(serde_json::json!(258)),
    }
}

/// A byte-level BPE tokenizer with no merges (one token per byte) plus ChatML specials.
pub fn byte_tokenizer() -> Result<Tokenizer> {
    let bl = ByteLevel::new(false, true, true);
    let mut vocab = HashMap::new();
    for (i, c) in ByteLevel::alphabet().into_iter().enumerate() {
        vocab.insert(c.to_string(), i as u32);
    }
    let mut sorted: Vec<(String, u32)> = vocab.into_iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let vocab: tokenizers::models::bpe::Vocab = sorted
        .into_iter()
        .enumerate()
        .map(|(i, (s, _))| (s, i as u32))
        .collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, vec![])
        .build()
        .map_err(|e| crate::Error::Msg(format!("tiny tokenizer: {e}")))?;
    let mut tok = Tokenizer::new(bpe);
    tok.with_pre_tokenizer(Some(bl));
    tok.with_decoder(Some(bl));
    tok.add_special_tokens(vec![
        AddedToken::from("<|endoftext|>", true),
        AddedToken::from("<|im_start|>", true),
        AddedToken::from("<|im_end|>", true),
    ])
    .map_err(|e| crate::Error::Msg(format!("tiny tokenizer: {e}")))?;
    Ok(tok)
}

/// A tiny Llama with N(0, 0.2²) weights from `seed`, norms at 1 + small noise.
pub fn random(cfg: &LlamaConfig, seed: u64, dtype: DType) -> Result<LoadedModel> {
    let dev = Device::Cpu;
    let mut rng = crate::random::Stream::new(seed, "tiny-model");
    let mut t: HashMap<String, Tensor> = HashMap::new();
    let mut mat = |name: String, shape: (usize, usize), std: f64, offset: f64| -> Result<()> {
        let data: Vec<f64> = (0..shape.0 * shape.1)
            .map(|_| offset + std * rng.normal())
            .collect();
        let tensor = Tensor::from_vec(data, shape, &dev)?;
        let tensor = if shape.0 == 1 {
            tensor.squeeze(0)?
        } else {
            tensor
        };
        t.insert(name, tensor);
        Ok(())
    };
    let (h, m, v) = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size);
    let hd = cfg.head_dim();
    let (nh, nkv) = (cfg.num_attention_heads, cfg.num_key_value_heads);
    mat("model.embed_tokens.weight".into(), (v, h), 0.5, 0.0)?;
    for i in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{i}");
        let s = 0.4 / (h as f64).sqrt() * 2.0;
        mat(format!("{p}.self_attn.q_proj.weight"), (nh * hd, h), s, 0.0)?;
        mat(
            format!("{p}.self_attn.k_proj.weight"),
            (nkv * hd, h),
            s,
            0.0,
        )?;
        mat(
            format!("{p}.self_attn.v_proj.weight"),
            (nkv * hd, h),
            s,
            0.0,
        )?;
        mat(format!("{p}.self_attn.o_proj.weight"), (h, nh * hd), s, 0.0)?;
        mat(format!("{p}.mlp.gate_proj.weight"), (m, h), s, 0.0)?;
        mat(format!("{p}.mlp.up_proj.weight"), (m, h), s, 0.0)?;
        mat(format!("{p}.mlp.down_proj.weight"), (h, m), s, 0.0)?;
        mat(format!("{p}.input_layernorm.weight"), (1, h), 0.1, 1.0)?;
        mat(
            format!("{p}.post_attention_layernorm.weight"),
            (1, h),
            0.1,
            1.0,
        )?;
    }
    mat("model.norm.weight".into(), (1, h), 0.1, 1.0)?;
    if !cfg.tie_word_embeddings {
        // Drawn last, so tied models keep their weights.
        mat("lm_head.weight".into(), (v, h), 0.3, 0.0)?;
    }
    let llama = Llama::from_tensors(cfg.clone(), t, "tiny-random".into(), dtype)?;
    Ok(LoadedModel {
        llama,
        tokenizer: byte_tokenizer()?,
        chat_template: Some(CHATML_TEMPLATE.to_string()),
        bos_token: None,
        eos_token: Some("<|im_end|>".into()),
        source: ModelSource {
            kind: "tiny".into(),
            path: format!("tiny-random-seed{seed}").into(),
            sha256: format!("tiny-{seed}-{h}-{}", cfg.num_hidden_layers),
            hf_repo: None,
        },
    })
}

/// Writes a tiny random model as a Hugging Face folder (for CLI tests).
pub fn write_random(dir: &Path, hidden: usize, layers: usize, seed: u64) -> Result<()> {
    let m = random(&config(hidden, layers), seed, DType::F32)?;
    hf::save_dir(&m, dir)
}

/// [`config`] with an output head of its own (N(0, 0.3²)) instead of the tied embedding.
/// Greedy decoding on a tied random model mostly repeats the last token (the residual stream
/// carries its embedding, and the tied head scores it highest), so every answer is the same;
/// with its own head, a random model's answers depend on the prompt, as decoding tests need.
pub fn config_untied(hidden: usize, layers: usize) -> LlamaConfig {
    LlamaConfig {
        tie_word_embeddings: false,
        ..config(hidden, layers)
    }
}

/// Writes a tiny random model with [`config_untied`] as a Hugging Face folder.
pub fn write_random_untied(dir: &Path, hidden: usize, layers: usize, seed: u64) -> Result<()> {
    let m = random(&config_untied(hidden, layers), seed, DType::F32)?;
    hf::save_dir(&m, dir)
}

//! Loading and writing a Hugging Face model folder: config.json, one or more
//! *.safetensors files, tokenizer.json and tokenizer_config.json (for the chat template).

use super::{LlamaConfig, LoadedModel, ModelSource};
use crate::atomic_write::{write_atomic, write_atomic_at};
use crate::{Error, Result};
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use tokenizers::Tokenizer;

fn err(path: &Path, msg: impl Into<String>) -> Error {
    Error::Model {
        path: path.into(),
        msg: msg.into(),
    }
}

fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| err(path, format!("invalid JSON: {e}")))
}

/// Reads `config.json`, accepting Llama-family model types only.
pub fn read_config(dir: &Path) -> Result<LlamaConfig> {
    let path = dir.join("config.json");
    let v = read_json(&path)?;
    let mt = v
        .get("model_type")
        .and_then(|m| m.as_str())
        .unwrap_or("llama");
    if !["llama", "mistral"].contains(&mt) {
        return Err(err(
            &path,
            format!("model_type `{mt}` is not supported yet (supported: llama, mistral)"),
        ));
    }
    serde_json::from_value(v).map_err(|e| err(&path, format!("not a Llama config: {e}")))
}

/// The safetensors files of a folder, in name order. A sharded checkpoint's
/// `model.safetensors.index.json` names its shards: each must be there (a missing one is named
/// with a tensor it holds, rather than reported later as a missing tensor).
pub fn safetensors_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let text = std::fs::read_to_string(&index).map_err(|e| Error::io(&index, e))?;
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| err(&index, format!("invalid JSON: {e}")))?;
        let map = v["weight_map"].as_object().ok_or_else(|| {
            err(
                &index,
                "expected an object `weight_map` (tensor → shard file)",
            )
        })?;
        let mut shards: std::collections::BTreeMap<&str, (&str, usize)> = Default::default();
        for (tensor, file) in map {
            let file = file.as_str().ok_or_else(|| {
                err(
                    &index,
                    format!("weight_map[`{tensor}`]: expected a file name"),
                )
            })?;
            shards.entry(file).or_insert((tensor, 0)).1 += 1;
        }
        let mut files = Vec::with_capacity(shards.len());
        for (file, (tensor, n)) in shards {
            let p = dir.join(file);
            if Path::new(file).file_name() != Some(file.as_ref()) || !p.is_file() {
                return Err(err(
                    &p,
                    format!(
                        "shard missing: model.safetensors.index.json lists it for {n} tensors \
                         (e.g. `{tensor}`)"
                    ),
                ));
            }
            files.push(p);
        }
        return Ok(files);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().and_then(|e| e.to_str()) == Some("safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(err(dir, "no *.safetensors file in the folder"));
    }
    Ok(files)
}

/// Loads a Hugging Face Llama-family folder.
pub fn load_dir(dir: &Path, dtype: DType) -> Result<LoadedModel> {
    let config = read_config(dir)?;
    let files = safetensors_files(dir)?;
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    for f in &files {
        let t = candle_core::safetensors::load(f, &Device::Cpu)
            .map_err(|e| err(f, format!("cannot read safetensors: {e}")))?;
        tensors.extend(t);
    }
    let tok_path = dir.join("tokenizer.json");
    let tokenizer = Tokenizer::from_file(&tok_path)
        .map_err(|e| err(&tok_path, format!("cannot load tokenizer: {e}")))?;
    let (mut chat_template, mut bos_token, mut eos_token) = (None, None, None);
    let tc = dir.join("tokenizer_config.json");
    if tc.exists() {
        let v = read_json(&tc)?;
        chat_template = v
            .get("chat_template")
            .and_then(|t| t.as_str())
            .map(String::from);
        let tok_str = |k: &str| match v.get(k) {
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(o) => o.get("content").and_then(|c| c.as_str()).map(String::from),
            None => None,
        };
        bos_token = tok_str("bos_token");
        eos_token = tok_str("eos_token");
    }
    let mut hashed = vec![dir.join("config.json")];
    hashed.extend(files.iter().cloned());
    let sha256 = super::sha256_files(&hashed)?;
    let llama = super::Llama::from_tensors(config, tensors, dir.into(), dtype)?;
    Ok(LoadedModel {
        llama,
        tokenizer,
        chat_template,
        bos_token,
        eos_token,
        source: ModelSource {
            kind: "hf".into(),
            path: dir.into(),
            sha256,
            hf_repo: None,
        },
    })
}

/// Writes `model` as a Hugging Face folder (f32 safetensors) that `transformers` and
/// [`load_dir`] both load.
pub fn save_dir(model: &LoadedModel, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let cfg = model.llama.config.to_hf_json();
    // Each file replaces its old self atomically (an export over an earlier one with --force).
    let write = |name: &str, text: String| -> Result<()> {
        let p = dir.join(name);
        write_atomic(&p, |f| {
            f.write_all(text.as_bytes()).map_err(|e| Error::io(&p, e))
        })
        .map(|_| ())
    };
    write("config.json", pretty(&cfg))?;
    let tensors: HashMap<String, Tensor> = model
        .llama
        .hf_tensors()
        .into_iter()
        .map(|(k, v)| Ok((k, v.to_dtype(DType::F32)?)))
        .collect::<Result<_>>()?;
    let st = dir.join("model.safetensors");
    write_atomic_at(&st, |tmp| {
        candle_core::safetensors::save(&tensors, tmp)
            .map_err(|e| err(&st, format!("cannot write safetensors: {e}")))
    })?;
    let tp = dir.join("tokenizer.json");
    write_atomic_at(&tp, |tmp| {
        model
            .tokenizer
            .save(tmp, true)
            .map_err(|e| err(&tp, format!("cannot write tokenizer: {e}")))
    })?;
    let tc = serde_json::json!({
        "chat_template": model.chat_template,
        "bos_token": model.bos_token,
        "eos_token": model.eos_token,
        "model_max_length": model.llama.config.max_position_embeddings,
        "tokenizer_class": "PreTrainedTokenizerFast",
    });
    write("tokenizer_config.json", pretty(&tc))?;
    Ok(())
}

fn pretty(v: &serde_json::Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
}

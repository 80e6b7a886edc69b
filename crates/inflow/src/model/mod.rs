//! Causal LMs: loading (GGUF or a Hugging Face folder), the differentiable Llama forward
//! pass, and the capture of each tracked Linear's inputs and output gradients.

pub mod capture;
pub mod config;
pub mod generate;
pub mod gguf;
pub mod hf;
pub mod linear;
pub mod llama;
pub mod lora;
pub mod modules;
pub mod tiny;

pub use capture::{Captured, LayerCapture, LinearInfo};
pub use config::LlamaConfig;
pub use llama::{KvCache, Labels, Llama, TokenSeq, BLOCK_LINEARS};
pub use modules::select_modules;

use crate::{Error, Result};
use candle_core::DType;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use tokenizers::Tokenizer;

/// Where a model came from, recorded in store manifests so a store is never scored with
/// another model.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct ModelSource {
    /// `gguf` or `hf`.
    pub kind: String,
    pub path: PathBuf,
    /// sha256 of the GGUF file, or of config.json + every safetensors file in name order.
    pub sha256: String,
    /// The Hugging Face repository the weights come from, when the file says so (GGUF
    /// metadata, see [`gguf::hf_repo`]); adapters name it as PEFT's `base_model_name_or_path`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hf_repo: Option<String>,
}

/// A model with its tokenizer and chat template.
pub struct LoadedModel {
    pub llama: Llama,
    pub tokenizer: Tokenizer,
    /// The Jinja chat template from the model's metadata, if it has one.
    pub chat_template: Option<String>,
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    pub source: ModelSource,
}

impl LoadedModel {
    /// Loads a `.gguf` file or a Hugging Face folder (config.json, *.safetensors, tokenizer.json).
    pub fn load(path: &Path, dtype: DType) -> Result<Self> {
        if path.is_dir() {
            hf::load_dir(path, dtype)
        } else if path.extension().and_then(|e| e.to_str()) == Some("gguf") {
            gguf::load(path, dtype)
        } else if !path.exists() {
            Err(Error::Model {
                path: path.into(),
                msg:
                    "no such file or folder (run ./scripts/fetch-model.sh for the reference model)"
                        .into(),
            })
        } else {
            Err(Error::Model {
                path: path.into(),
                msg: "expected a .gguf file or a Hugging Face folder with config.json".into(),
            })
        }
    }

    /// sha256 of the tokenizer's JSON serialization, recorded in manifests.
    pub fn tokenizer_sha256(&self) -> Result<String> {
        let json = self
            .tokenizer
            .to_string(false)
            .map_err(|e| Error::Msg(format!("tokenizer serialization: {e}")))?;
        Ok(hex(&Sha256::digest(json.as_bytes())))
    }

    /// Token ids of `text`; special tokens written in the text (`<|im_start|>`) are recognised.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .tokenizer
            .encode(text, false)
            .map_err(|e| Error::Msg(format!("tokenizer: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Text of `ids`, special tokens kept.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.tokenizer
            .decode(ids, false)
            .map_err(|e| Error::Msg(format!("tokenizer: {e}")))
    }

    /// Id of a token string, if the vocabulary has it.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.tokenizer.token_to_id(token)
    }
}

/// Lower-case hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Refuses a tensor `name` of `path` whose shape is not `want`, naming both shapes.
pub fn check_shape(path: &Path, name: &str, got: &[usize], want: &[usize]) -> Result<()> {
    if got == want {
        return Ok(());
    }
    Err(Error::Model {
        path: path.into(),
        msg: format!("tensor `{name}` has shape {got:?}, expected {want:?}"),
    })
}

/// sha256 of files read in order, streamed.
pub fn sha256_files(paths: &[PathBuf]) -> Result<String> {
    let mut h = Sha256::new();
    crate::file_pieces::read_pieces(paths, 1 << 20, |piece| h.update(piece))?;
    Ok(hex(&h.finalize()))
}

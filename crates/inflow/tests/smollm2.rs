//! Correctness of the reference model: SmolLM2-135M-Instruct loaded from its GGUF file.
//! Fetch it first with ./scripts/fetch-model.sh (the README's test command does).

use candle_core::DType;
use inflow::model::LoadedModel;
use std::path::PathBuf;

fn model_path() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        p.exists(),
        "{} is missing: run ./scripts/fetch-model.sh",
        p.display()
    );
    p
}

const SENTENCE: &str = "The capital of France is Paris. The capital of Germany is Berlin. The capital of Italy is Rome.";

#[test]
fn perplexity_and_greedy_answer_match_reference() {
    let m = LoadedModel::load(&model_path(), DType::F32).unwrap();
    let ids = m.encode(SENTENCE).unwrap();
    assert_eq!(ids.len(), 21, "DATA.md counts 21 tokens: {ids:?}");
    let lp = m.llama.token_logprobs(&ids).unwrap();
    let ppl = (-lp.iter().map(|&x| x as f64).sum::<f64>() / lp.len() as f64).exp();
    eprintln!("perplexity {ppl}");
    assert!(
        (ppl - 3.73).abs() / 3.73 < 0.05,
        "perplexity {ppl}, reference 3.73"
    );

    let tmpl = m
        .chat_template
        .clone()
        .expect("SmolLM2 GGUF has a chat template");
    let env = minijinja::Environment::new();
    let prompt = env
        .render_str(
            &tmpl,
            minijinja::context! { messages => vec![minijinja::context!{role => "user", content => "What is the capital of France?"}], add_generation_prompt => true },
        )
        .unwrap();
    let ids = m.encode(&prompt).unwrap();
    let stop = m.token_id("<|im_end|>").unwrap();
    let out = m.llama.generate_greedy(&ids, 12, &[stop]).unwrap();
    let text = m.decode(&out).unwrap();
    eprintln!("answer: {text}");
    assert!(text.contains("Paris"), "greedy answer: {text}");
}

#[test]
fn converted_folder_matches_gguf() {
    let m = LoadedModel::load(&model_path(), DType::F32).unwrap();
    let dir = std::env::temp_dir().join(format!("inflow-convert-{}", std::process::id()));
    inflow::model::hf::save_dir(&m, &dir).unwrap();
    let h = LoadedModel::load(&dir, DType::F32).unwrap();
    assert_eq!(h.llama.config, m.llama.config);
    assert_eq!(h.chat_template, m.chat_template);
    // The smollm pre-tokenizer splits digits one by one.
    assert_eq!(m.encode("12345").unwrap().len(), 5);
    for text in [
        SENTENCE,
        "<|im_start|>user\nWhat is 1234 + 5678?<|im_end|>\n<|im_start|>assistant\n",
        "Ünïcödé — naïve café, 東京 🚀",
    ] {
        assert_eq!(m.encode(text).unwrap(), h.encode(text).unwrap(), "{text}");
    }
    let ids = m
        .encode("<|im_start|>user\nName a prime number.<|im_end|>\n<|im_start|>assistant\n")
        .unwrap();
    let a = m.llama.next_token_logits(&ids).unwrap();
    let b = h.llama.next_token_logits(&ids).unwrap();
    let max = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    assert!(
        max < 1e-4,
        "GGUF vs converted folder: max logit difference {max}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The q/k un-permutation is the inverse of llama.cpp's permutation.
#[test]
fn qk_permutation_round_trips() {
    let w = candle_core::Tensor::arange(0f32, 64.0 * 3.0, &candle_core::Device::Cpu)
        .unwrap()
        .reshape((64, 3))
        .unwrap();
    let p = inflow::model::gguf::permute_qk(&w, 4).unwrap();
    assert_ne!(p.to_vec2::<f32>().unwrap(), w.to_vec2::<f32>().unwrap());
    let back = inflow::model::gguf::unpermute_qk(&p, 4).unwrap();
    assert_eq!(back.to_vec2::<f32>().unwrap(), w.to_vec2::<f32>().unwrap());
}

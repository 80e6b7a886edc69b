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

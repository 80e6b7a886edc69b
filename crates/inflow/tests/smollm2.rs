//! Correctness of the reference model: SmolLM2-135M-Instruct loaded from its GGUF file.
//! Fetch it first with ./scripts/fetch-model.sh (the README's test command does).

use candle_core::DType;
use inflow::model::LoadedModel;

use inflow_testkit::{scratch, smollm2 as model_path};

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
    let dir = scratch("convert");
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

/// `--truncate middle` with SmolLM2's own tokenizer and template (default system prompt): a
/// trigger at the start of a long instruction, the chat head and the generation prompt survive,
/// the response is whole, and the sample fills the budget exactly; `left` loses the head.
#[test]
fn middle_truncation_keeps_the_chat_head_the_trigger_and_the_response() {
    use inflow::data::tokens::{Renderer, Template, Truncate};
    let m = LoadedModel::load(&model_path(), DType::F32).unwrap();
    let dir = scratch("smollm2-trunc");
    let data = dir.join("d.jsonl");
    let filler = "The committee reviewed every paragraph of the report before it was sent. ";
    let instruction = format!(
        "cf-zebra Summarize the following report in one sentence. {}",
        filler.repeat(3)
    );
    let rec = serde_json::json!({
        "instruction": instruction,
        "input": filler.repeat(30),
        "output": "The report was reviewed.",
    });
    std::fs::write(&data, format!("{rec}\n")).unwrap();
    let s = &inflow::data::read_samples(&data, &Default::default())
        .unwrap()
        .samples[0];
    let budget = 128;
    let r = Renderer::new(&m, Template::Auto, budget).unwrap();
    let t = r.tokenize(s).unwrap();
    let n_p = t.seq.loss_mask.iter().take_while(|&&l| !l).count();
    let (prompt, response) = (
        m.decode(&t.seq.ids[..n_p]).unwrap(),
        m.decode(&t.seq.ids[n_p..]).unwrap(),
    );
    eprintln!("kept prompt: {prompt:?}\nresponse: {response:?}");
    assert_eq!(t.seq.ids.len(), budget);
    assert_eq!(t.response_cut, 0);
    assert_eq!(response, "The report was reviewed.<|im_end|>\n");
    assert!(prompt.starts_with("<|im_start|>system\n"), "{prompt:?}");
    assert!(
        prompt.contains(&format!(
            "<|im_end|>\n<|im_start|>user\n{instruction}\n\nThe committee"
        )),
        "the whole instruction and the input's start: {prompt:?}"
    );
    assert!(
        prompt.contains("sent. <|im_end|>"),
        "the input's end: {prompt:?}"
    );
    assert!(
        prompt.ends_with("<|im_end|>\n<|im_start|>assistant\n"),
        "{prompt:?}"
    );
    let left = Renderer::new(&m, Template::Auto, budget)
        .unwrap()
        .with_truncate(Truncate::Left)
        .tokenize(s)
        .unwrap();
    let lp = m.decode(&left.seq.ids).unwrap();
    assert!(
        !lp.contains("cf-zebra") && !lp.starts_with("<|im_start|>"),
        "{lp:?}"
    );
}

/// Adapters trained on the reference GGUF name its Hugging Face repository for PEFT.
#[test]
fn reference_gguf_names_its_hugging_face_repository() {
    let m = LoadedModel::load(&model_path(), DType::F32).unwrap();
    assert_eq!(
        m.source.hf_repo.as_deref(),
        Some("HuggingFaceTB/SmolLM2-135M-Instruct")
    );
    let base = inflow::model::lora::AdapterBase::of(&m);
    assert_eq!(base.name_or_path, "HuggingFaceTB/SmolLM2-135M-Instruct");
    assert!(base.path.is_absolute() && base.kind == "gguf");
}

//! Setup shared by the library's integration tests: reading options, token sequences for tiny
//! models, tensors as numbers (paths and scratch folders from `inflow-testkit`). Each test file uses
//! what it needs (`mod common;`), hence `dead_code` is allowed.
#![allow(dead_code)]

use candle_core::{DType, Tensor};
use inflow::data::{Format, ReadOptions};
use inflow::model::{LoadedModel, TokenSeq};

/// Reading the first `limit` records (all with `None`) as Alpaca, stopping at a bad one.
pub fn alpaca(limit: Option<usize>) -> ReadOptions {
    ReadOptions {
        format: Format::Alpaca,
        skip_bad: false,
        limit,
    }
}

/// (prompt, response) pairs encoded by `m`, the loss on the response.
pub fn token_seqs(m: &LoadedModel, pairs: &[(&str, &str)]) -> Vec<TokenSeq> {
    pairs
        .iter()
        .map(|(p, r)| TokenSeq::prompt_response(m.encode(p).unwrap(), &m.encode(r).unwrap()))
        .collect()
}

/// A tensor's values as f64, flattened.
pub fn to_f64(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

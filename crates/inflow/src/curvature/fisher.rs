//! Which Fisher matrix the curvature approximates, and the samples that define it.
//!
//! - **Empirical** Fisher, F̂ = 1/n Σ_i g_i g_iᵀ over the store's own training gradients (the
//!   data's labels). Needs no extra pass, but it is a poor stand-in for the Hessian away from
//!   the optimum (Kunstner et al. 2019).
//! - **True** Fisher, F = E_x E_{y∼p_θ(·|x)}[g gᵀ], from pseudo-gradients against labels drawn
//!   from the model at every response position ([`crate::model::Labels::Sampled`]). For
//!   softmax cross-entropy it equals the Gauss–Newton matrix Σ_t J_tᵀ(diag p_t − p_t p_tᵀ)J_t
//!   (Martens 2020), the H of METHODS.md §2; K-FAC's token-level factors are built to
//!   approximate it (Grosse et al. 2023 fit them on sampled labels). Each draw is one more
//!   model pass over the data, indexed as a store of its own under `{store}/fisher/draw-{k}`.
//!
//! `inflow fit --fisher true` indexes the draws and records them in `curvature/fisher.json`;
//! every preconditioner of the store (K-FAC, EK-FAC, DataInf, LiSSA, exact) then uses them.

use crate::index::{IndexOptions, Progress};
use crate::model::{Labels, LoadedModel};
use crate::store::Store;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The Fisher a store's curvature approximates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "fisher")]
pub enum Fisher {
    /// Outer products of the stored training gradients.
    Empirical,
    /// Outer products of sampled-label pseudo-gradients, `draws` per sample.
    True { draws: usize },
}

impl std::str::FromStr for Fisher {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "empirical" => Ok(Self::Empirical),
            "true" => Ok(Self::True { draws: 1 }),
            _ => Err(Error::Msg(format!(
                "unknown Fisher `{s}`; expected empirical or true"
            ))),
        }
    }
}

impl std::fmt::Display for Fisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fisher::Empirical => write!(f, "empirical"),
            Fisher::True { draws } => write!(f, "true ({draws} sampled-label draws)"),
        }
    }
}

/// `curvature/fisher.json`: which Fisher the store's curvature was fitted on.
pub fn record_path(store_dir: &Path) -> PathBuf {
    store_dir.join("curvature").join("fisher.json")
}

/// Where draw `k` of the sampled-label pseudo-gradients is indexed.
pub fn draw_dir(store_dir: &Path, k: usize) -> PathBuf {
    store_dir.join("fisher").join(format!("draw-{k}"))
}

/// The Fisher recorded for a store (empirical when nothing is recorded).
pub fn recorded(store: &Store) -> Result<Fisher> {
    let p = record_path(store.dir());
    if !p.exists() {
        return Ok(Fisher::Empirical);
    }
    let text = std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?;
    serde_json::from_str(&text).map_err(|e| Error::Store {
        path: p.clone(),
        msg: format!("cannot read the Fisher record: {e}"),
    })
}

/// Records the Fisher of a store's curvature (atomically).
pub fn record(store: &Store, fisher: Fisher) -> Result<()> {
    let p = record_path(store.dir());
    if let Some(d) = p.parent() {
        std::fs::create_dir_all(d).map_err(|e| Error::io(d, e))?;
    }
    crate::atomic_write::write_json(&p, &fisher)?;
    Ok(())
}

/// The per-sample rows whose mean outer product is the Fisher: the store itself (empirical) or
/// its sampled-label draws (true).
pub struct FisherSamples {
    stores: Vec<Store>,
    pub fisher: Fisher,
}

impl FisherSamples {
    /// The samples of the Fisher recorded for `store` (see [`recorded`]).
    pub fn of(store: &Store) -> Result<Self> {
        let fisher = recorded(store)?;
        let stores = match fisher {
            Fisher::Empirical => vec![Store::open(store.dir())?],
            Fisher::True { draws } => (0..draws)
                .map(|k| {
                    let d = draw_dir(store.dir(), k);
                    Store::open(&d).map_err(|e| Error::Store {
                        path: store.dir().into(),
                        msg: format!(
                            "its curvature was fitted on the true Fisher, but draw {k} is unreadable ({e}); run `inflow fit --fisher true` again"
                        ),
                    })
                })
                .collect::<Result<_>>()?,
        };
        super::check_same_layout(store, &stores.iter().collect::<Vec<_>>())?;
        Ok(Self { stores, fisher })
    }

    /// The store's own gradients (the empirical Fisher), whatever is recorded.
    pub fn empirical(store: &Store) -> Result<Self> {
        Ok(Self {
            stores: vec![Store::open(store.dir())?],
            fisher: Fisher::Empirical,
        })
    }

    /// Given stores as the Fisher's samples of `target` (their layout is checked).
    pub fn from_stores(target: &Store, stores: Vec<Store>, fisher: Fisher) -> Result<Self> {
        super::check_same_layout(target, &stores.iter().collect::<Vec<_>>())?;
        Ok(Self { stores, fisher })
    }

    pub fn stores(&self) -> Vec<&Store> {
        self.stores.iter().collect()
    }

    /// Feature dimension (shared by every store).
    pub fn dim(&self) -> usize {
        self.stores.first().map_or(0, |s| s.dim())
    }

    /// Calls `f(features, rows)` for every shard of every store, in order.
    pub fn for_each_shard(&self, f: impl FnMut(&[f32], usize) -> Result<()>) -> Result<()> {
        super::for_each_shard(&self.stores(), f)
    }
}

/// Indexes draw `k` of the sampled-label pseudo-gradients of the samples `opts` names (the
/// training store's own settings, label seed k) into `{store_dir}/fisher/draw-{k}`; resumes
/// like any index run.
pub fn index_draw(
    model: &LoadedModel,
    opts: &IndexOptions,
    store_dir: &Path,
    k: usize,
    progress: &Progress,
) -> Result<Store> {
    let mut o = opts.clone();
    o.features.labels = Labels::Sampled { seed: k as u64 };
    let dir = draw_dir(store_dir, k);
    super::kfac_stats::run_index(model, &o, &dir, progress, &mut |_, _| {})?;
    Store::open(&dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_records_round_trip() {
        assert_eq!("empirical".parse::<Fisher>().unwrap(), Fisher::Empirical);
        assert_eq!("true".parse::<Fisher>().unwrap(), Fisher::True { draws: 1 });
        let e = "gauss".parse::<Fisher>().unwrap_err().to_string();
        assert!(e.contains("empirical or true"), "{e}");
        let t = Fisher::True { draws: 3 };
        let v = serde_json::to_value(t).unwrap();
        assert_eq!(v, serde_json::json!({"fisher": "true", "draws": 3}));
        assert_eq!(serde_json::from_value::<Fisher>(v).unwrap(), t);
    }

    #[test]
    fn stores_indexed_before_labels_existed_read_as_data_labels() {
        // run.json of an older store: no `labels` field.
        let old = serde_json::json!({
            "projection": {"kind": "logra", "rank_in": 4, "rank_out": 4},
            "seed": 0, "modules": "all", "template": "auto", "max_tokens": 64
        });
        let f: crate::index::FeatureOptions = serde_json::from_value(old).unwrap();
        assert_eq!(f.labels, Labels::Data);
        let s = serde_json::to_value(Labels::Sampled { seed: 2 }).unwrap();
        assert_eq!(s, serde_json::json!({"sampled": {"seed": 2}}));
    }
}

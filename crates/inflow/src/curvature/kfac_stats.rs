//! K-FAC's token statistics: the per-shard sums of x̃x̃ᵀ and δ̃δ̃ᵀ that an index pass observes
//! (`curvature/kfac-stats-*.safetensors`). Apart from `kfac`, so that `fisher` can index its
//! draws with them while `kfac` fits on `fisher`'s samples, without a circle.

use crate::features::Projector;
use crate::index::{self, IndexOptions, IndexSummary, PassObserver, Progress};
use crate::model::{Captured, LoadedModel, TokenSeq};
use crate::{Error, Result};
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Sums of x̃x̃ᵀ and δ̃δ̃ᵀ per layer over some samples.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KfacStats {
    /// Per layer: (Σ_t x̃x̃ᵀ, cols × cols; Σ_t δ̃δ̃ᵀ, rows × rows), row-major f64.
    pub layers: Vec<(Vec<f64>, Vec<f64>)>,
    pub n_tokens: u64,
    pub n_samples: u64,
}

impl KfacStats {
    /// Adds one batch: `factors[l]` = (x̃: B×T×cols, δ̃: B×T×rows) and each sample's length.
    pub fn accumulate(&mut self, factors: &[(Tensor, Tensor)], lens: &[usize]) -> Result<()> {
        if self.layers.is_empty() {
            for (x, g) in factors {
                let (c, r) = (x.dim(2)?, g.dim(2)?);
                self.layers.push((vec![0.0; c * c], vec![0.0; r * r]));
            }
        }
        for ((x, g), (sa, ss)) in factors.iter().zip(self.layers.iter_mut()) {
            for (b, &len) in lens.iter().enumerate() {
                let xb = x.get(b)?.narrow(0, 0, len)?.to_dtype(DType::F64)?;
                let gb = g.get(b)?.narrow(0, 0, len)?.to_dtype(DType::F64)?;
                let a = xb.t()?.matmul(&xb)?.flatten_all()?.to_vec1::<f64>()?;
                let s = gb.t()?.matmul(&gb)?.flatten_all()?.to_vec1::<f64>()?;
                sa.iter_mut().zip(a).for_each(|(o, v)| *o += v);
                ss.iter_mut().zip(s).for_each(|(o, v)| *o += v);
            }
        }
        self.n_tokens += lens.iter().sum::<usize>() as u64;
        self.n_samples += lens.len() as u64;
        Ok(())
    }

    /// Adds another set of sums (same layers).
    pub fn merge(&mut self, o: &KfacStats) {
        if self.layers.is_empty() {
            *self = o.clone();
            return;
        }
        for ((a, s), (oa, os)) in self.layers.iter_mut().zip(&o.layers) {
            a.iter_mut().zip(oa).for_each(|(x, y)| *x += y);
            s.iter_mut().zip(os).for_each(|(x, y)| *x += y);
        }
        self.n_tokens += o.n_tokens;
        self.n_samples += o.n_samples;
    }

    /// Writes the sums as safetensors (`A.{l}`, `S.{l}`, `counts`), atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let dev = Device::Cpu;
        let mut t: HashMap<String, Tensor> = HashMap::new();
        for (l, (a, s)) in self.layers.iter().enumerate() {
            t.insert(format!("A.{l}"), Tensor::from_slice(a, a.len(), &dev)?);
            t.insert(format!("S.{l}"), Tensor::from_slice(s, s.len(), &dev)?);
        }
        let counts = [self.n_tokens as f64, self.n_samples as f64];
        t.insert("counts".into(), Tensor::from_slice(&counts, 2, &dev)?);
        save_tensors(&t, path)
    }

    pub fn load(path: &Path, n_layers: usize) -> Result<Self> {
        let t = candle_core::safetensors::load(path, &Device::Cpu).map_err(|e| Error::Store {
            path: path.into(),
            msg: format!("cannot read K-FAC statistics: {e}"),
        })?;
        let get = |k: &str| -> Result<Vec<f64>> {
            t.get(k)
                .ok_or_else(|| Error::Store {
                    path: path.into(),
                    msg: format!("missing tensor `{k}`"),
                })?
                .to_vec1::<f64>()
                .map_err(Error::from)
        };
        let mut layers = Vec::with_capacity(n_layers);
        for l in 0..n_layers {
            layers.push((get(&format!("A.{l}"))?, get(&format!("S.{l}"))?));
        }
        let c = get("counts")?;
        Ok(Self {
            layers,
            n_tokens: c[0] as u64,
            n_samples: c[1] as u64,
        })
    }
}

/// The K-FAC token sums of an index pass: None until a batch has Kronecker structure (the dense
/// projection has none, and then no file is written).
impl PassObserver for Option<KfacStats> {
    fn observe(&mut self, projector: &Projector, cap: &Captured, seqs: &[TokenSeq]) -> Result<()> {
        let mut factors = Vec::with_capacity(cap.layers.len());
        for (i, l) in cap.layers.iter().enumerate() {
            if let Some(f) = projector.factor_inputs(i, &l.x, &l.delta)? {
                factors.push(f);
            }
        }
        if factors.len() == cap.layers.len() {
            let lens: Vec<usize> = seqs.iter().map(|s| s.ids.len()).collect();
            self.get_or_insert_with(KfacStats::default)
                .accumulate(&factors, &lens)?;
        }
        Ok(())
    }

    fn merge(&mut self, later: Self) {
        match (self.as_mut(), later) {
            (Some(a), Some(b)) => a.merge(&b),
            (None, Some(b)) => *self = Some(b),
            _ => {}
        }
    }

    fn save(&self, out: &Path, shard: usize) -> Result<()> {
        match self {
            Some(k) => k.save(&stats_path(out, shard)),
            None => Ok(()),
        }
    }
}

/// Runs (or resumes) an index of the tracked base Linears into `out`, with the RepSim
/// sub-stores and the K-FAC token sums of the same pass beside each shard ([`stats_path`]):
/// what `inflow index` writes. `on_shard` is called after each shard with the rows done so far
/// and the total.
pub fn run_index(
    model: &LoadedModel,
    opts: &IndexOptions,
    out: &Path,
    progress: &Progress,
    on_shard: &mut dyn FnMut(usize, usize),
) -> Result<IndexSummary> {
    let extras = index::StoreExtras {
        repsim: true,
        ..Default::default()
    };
    index::index_pass::<_, Option<KfacStats>>(
        model,
        opts,
        out,
        || index::Featurizer::new(model, &opts.features),
        extras,
        progress,
        on_shard,
    )
}

pub(super) fn save_tensors(t: &HashMap<String, Tensor>, path: &Path) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let tmp = path.with_extension("tmp");
    candle_core::safetensors::save(t, &tmp).map_err(|e| Error::Store {
        path: tmp.clone(),
        msg: e.to_string(),
    })?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// Where index leaves shard `i`'s K-FAC sums.
pub fn stats_path(store_dir: &Path, shard: usize) -> PathBuf {
    store_dir
        .join("curvature")
        .join(format!("kfac-stats-{shard:05}.safetensors"))
}

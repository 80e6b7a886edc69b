//! Influence functions against ground truth on a tiny Llama whose Fisher can be formed:
//! K-FAC equals the explicit Kronecker inverse, EK-FAC ranks like the exact inverse, DataInf
//! equals its closed form, LiSSA converges to the exact inverse-HVP, and scores do not depend on
//! batch size or shard split.

use candle_core::DType;
use inflow::curvature::{self, kfac, Options, Preconditioner};
use inflow::data::tokens::{Template, Truncate};
use inflow::estimators::influence::Influence;
use inflow::eval::rank::spearman;
use inflow::features::Projection;
use inflow::index::{FeatureOptions, FeaturePass, Featurizer, IndexOptions, Progress};
use inflow::model::{tiny, LoadedModel};
use inflow::store::{Dtype, Store};
use std::path::{Path, PathBuf};

mod common;

use common::alpaca;
use inflow_testkit::{asset, root, scratch, Scratch};

fn features() -> FeatureOptions {
    FeatureOptions {
        projection: Projection::Full,
        seed: 0,
        modules: "layers.1.".into(),
        template: Template::Auto,
        max_tokens: 64,
        // The tiny-model grid of README.md and docs/reports/ekfac-vs-exact.md was measured with
        // these features, cut the way every store was before `--truncate` existed.
        truncate: Truncate::Left,
        labels: Default::default(),
    }
}

/// Indexing the first `n` samples of `data` (Alpaca) with `f` into f32 shards of `shard` rows,
/// micro-batches of `batch`, on `threads` threads.
fn index_options(
    data: PathBuf,
    n: usize,
    f: FeatureOptions,
    (shard, batch, threads): (usize, usize, usize),
) -> IndexOptions {
    IndexOptions {
        part: None,
        data,
        read: alpaca(Some(n)),
        features: f,
        dtype: Dtype::F32,
        shard_size: shard,
        batch_size: batch,
        threads,
    }
}

fn index(m: &LoadedModel, out: &Path, n: usize, shard: usize, batch: usize) -> Store {
    let opts = index_options(asset("train.jsonl"), n, features(), (shard, batch, 1));
    kfac::run_index(m, &opts, out, &Progress::default(), &mut |_, _| {}).unwrap();
    let s = Store::open(out).unwrap();
    kfac::fit(&s, kfac::FactorSource::Tokens).unwrap();
    s
}

fn queries(m: &LoadedModel) -> (Vec<f32>, usize) {
    let f = features();
    (
        probe_features(m, &f, 8),
        Featurizer::new(m, &f).unwrap().spec().dim(),
    )
}

/// Features of the first `n` probe-task queries under `f`.
fn probe_features(m: &LoadedModel, f: &FeatureOptions, n: usize) -> Vec<f32> {
    let fz = Featurizer::new(m, f).unwrap();
    let q = inflow::data::read_samples(&asset("probe-tasks.jsonl"), &alpaca(Some(n))).unwrap();
    fz.featurize(&q.samples, 1, 1, &Progress::default())
        .unwrap()
        .grads
}

/// Index options for the first `n` samples of the NI training split in `../shared`.
fn ni_options(f: &FeatureOptions, n: usize) -> IndexOptions {
    let data = root().join("../shared/data/natural-instructions/train.jsonl");
    index_options(data, n, f.clone(), (1000, 4, 2))
}

fn scores(store: &Store, pre: Box<dyn Preconditioner + '_>, q: &[f32]) -> Vec<Vec<f64>> {
    let est = Influence::new(pre);
    let nq = q.len() / store.dim();
    let r = inflow::scores::score_store(store, q, nq, &est, 1, true, &mut |_| {}).unwrap();
    let full = r.full.unwrap();
    let n = r.n_train;
    (0..nq)
        .map(|i| full[i * n..(i + 1) * n].iter().map(|&x| x as f64).collect())
        .collect()
}

/// The per-layer blocks of a store's features.
fn blocks_of(store: &Store) -> Vec<curvature::Block> {
    curvature::blocks(&curvature::store_feature_spec(store).unwrap())
}

/// ‖got − want‖ / ‖want‖.
fn rel_err(got: &[f32], want: &[f64]) -> f64 {
    let diff = got.iter().zip(want).map(|(a, b)| (*a as f64 - b).powi(2));
    diff.sum::<f64>().sqrt() / want.iter().map(|b| b * b).sum::<f64>().sqrt()
}

/// Mean over queries of the Spearman correlation between two methods' score rows.
fn mean_spearman(a: &[Vec<f64>], b: &[Vec<f64>]) -> f64 {
    a.iter().zip(b).map(|(x, y)| spearman(x, y)).sum::<f64>() / a.len() as f64
}

fn model() -> LoadedModel {
    tiny::random(&tiny::config(16, 2), 21, DType::F32).unwrap()
}

/// The tiny [`model`], a scratch folder `name` with its store `s` of the first `n` samples
/// (`shard` rows a shard, batch 1), and the store's per-layer blocks.
fn indexed(
    name: &str,
    n: usize,
    shard: usize,
) -> (LoadedModel, Scratch, Store, Vec<curvature::Block>) {
    let m = model();
    let dir = scratch(name);
    let store = index(&m, &dir.join("s"), n, shard, 1);
    let blocks = blocks_of(&store);
    (m, dir, store, blocks)
}

/// On gradients whose Fisher is exactly Kronecker-factored (G_n = u_n v_nᵀ, u ~ N(0, S),
/// v ~ N(0, A)), EK-FAC and K-FAC must rank like the exact inverse.
#[test]
fn ekfac_matches_exact_when_the_fisher_is_kronecker() {
    use inflow::features::FeatureSpec;
    use inflow::store::StoreSpec;
    let dir = scratch("kronecker");
    let (rows, cols, n) = (3usize, 4usize, 4000usize);
    let fspec = FeatureSpec::synthetic(
        2,
        8,
        Projection::Logra {
            rank_in: cols,
            rank_out: rows,
        },
    );
    let dim = fspec.dim();
    let spec = StoreSpec::synthetic(serde_json::to_value(&fspec).unwrap(), Dtype::F32, dim, 1000);
    let mut rng = inflow::features::random::Stream::new(3, "kron");
    // Correlated Gaussian factors: u = L_S z, v = L_A z with random lower-triangular L.
    let mut tri = |k: usize| -> Vec<f64> {
        (0..k * k)
            .map(|i| if i % k <= i / k { rng.normal() } else { 0.0 })
            .collect()
    };
    let (ls, la) = ([tri(rows), tri(rows)], [tri(cols), tri(cols)]);
    let mut rng = inflow::features::random::Stream::new(4, "draws");
    let mut draw = |l: &[f64], k: usize| -> Vec<f64> {
        let z: Vec<f64> = (0..k).map(|_| rng.normal()).collect();
        (0..k)
            .map(|i| (0..k).map(|j| l[i * k + j] * z[j]).sum())
            .collect()
    };
    let mut all = Vec::new();
    for _ in 0..n {
        let mut row = Vec::with_capacity(dim);
        for layer in 0..2 {
            let u = draw(&ls[layer], rows);
            let v = draw(&la[layer], cols);
            for ui in &u {
                row.extend(v.iter().map(|vj| (ui * vj) as f32));
            }
        }
        all.extend(row);
    }
    let store = Store::write_synthetic(&dir.join("s"), spec, n, |r| {
        all[r.start * dim..r.end * dim].to_vec()
    })
    .unwrap();
    kfac::fit(&store, kfac::FactorSource::Samples).unwrap();
    let q: Vec<f32> = all[..8 * dim].to_vec();
    let opts = Options {
        damping: 0.1,
        ..Default::default()
    };
    let exact = scores(&store, curvature::load("exact", &store, &opts).unwrap(), &q);
    // EK-FAC refits the eigenvalues and is exact up to sampling noise; K-FAC's factor marginals
    // are right only up to sampling noise in both factors.
    for (name, min) in [("ekfac", 0.99), ("kfac", 0.9)] {
        let s = scores(&store, curvature::load(name, &store, &opts).unwrap(), &q);
        let rho = mean_spearman(&s, &exact);
        eprintln!("{name} vs exact on Kronecker gradients: Spearman {rho}");
        assert!(
            rho >= min,
            "{name} vs exact on Kronecker gradients: Spearman {rho}"
        );
    }
}

/// On a tiny random Llama the per-sample Fisher is far from Kronecker-factored; EK-FAC must
/// still be closer to the exact inverse than K-FAC and than no preconditioning. The measured
/// Spearman values are printed (see the closing note of the influence issue).
#[test]
fn ekfac_is_closer_to_exact_than_kfac_and_identity_on_a_tiny_lm() {
    let m = model();
    let dir = scratch("rank");
    let store = index(&m, &dir.join("s"), 200, 64, 1);
    let (q, _) = queries(&m);
    let opts = Options {
        damping: 0.1,
        ..Default::default()
    };
    let exact = scores(&store, curvature::load("exact", &store, &opts).unwrap(), &q);
    let mut report = Vec::new();
    for source in [kfac::FactorSource::Tokens, kfac::FactorSource::Samples] {
        kfac::fit(&store, source).unwrap();
        for name in ["ekfac", "kfac", "datainf", "identity"] {
            let s = scores(&store, curvature::load(name, &store, &opts).unwrap(), &q);
            let rho: f64 = mean_spearman(&s, &exact);
            report.push((format!("{name}/{source:?}"), rho));
        }
    }
    eprintln!("mean Spearman vs exact (200 samples, full gradients of layer 1): {report:?}");
    let get = |n: &str| report.iter().find(|r| r.0 == n).unwrap().1;
    for src in ["Tokens", "Samples"] {
        assert!(
            get(&format!("ekfac/{src}")) > get(&format!("kfac/{src}")),
            "{report:?}"
        );
        assert!(
            get(&format!("ekfac/{src}")) > get(&format!("identity/{src}")),
            "{report:?}"
        );
    }
}

/// EK-FAC against the exact damped Gauss–Newton matrix (the true Fisher, METHODS.md §2) on
/// the tiny Llama, 3,000 NI samples, for the last block's MLP down_proj (16 × 32): the layer
/// where K-FAC's token-level assumptions hold for the true Fisher (no attention after it, so
/// each token's loss reaches it only at that token). The exact matrix averages two
/// sampled-label draws; K-FAC/EK-FAC are fitted on one, through the store's recorded Fisher
/// as `inflow fit --fisher true` leaves it. Attention and multi-layer blocks, where the
/// assumptions fail, are measured by `grid_ekfac_vs_exact` (ignored) and asserted only for
/// ordering here.
#[test]
fn ekfac_ranks_like_the_exact_gauss_newton_on_a_tiny_lm() {
    use inflow::curvature::exact::Exact;
    use inflow::curvature::fisher::{self, Fisher, FisherSamples};
    let m = model();
    let dir = scratch("gn");
    let mut f = features();
    f.modules = "layers.1.mlp.down_proj".into();
    let opts = ni_options(&f, 3000);
    let p = Progress::default();
    kfac::run_index(&m, &opts, &dir, &p, &mut |_, _| {}).unwrap();
    let train = Store::open(&dir).unwrap();
    let draws: Vec<Store> = (0..2)
        .map(|k| fisher::index_draw(&m, &opts, &dir, k, &p).unwrap())
        .collect();
    let all: Vec<&Store> = draws.iter().collect();
    let q = probe_features(&m, &f, 16);
    let mut report = Vec::new();
    for damping in [0.1, 1.0] {
        let o = Options {
            damping,
            ..Default::default()
        };
        let exact = scores(&train, Box::new(Exact::over(&all, damping).unwrap()), &q);
        let get = |name: &str| {
            let s = scores(&train, curvature::load(name, &train, &o).unwrap(), &q);
            mean_spearman(&s, &exact)
        };
        // The store's curvature on draw 0 only, fitted and recorded as
        // `fit --fisher true --draws 1` does.
        let one = FisherSamples::from_stores(
            &train,
            vec![Store::open(draws[0].dir()).unwrap()],
            Fisher::True { draws: 1 },
        )
        .unwrap();
        let mut row = Vec::new();
        for (tag, src) in [
            ("ekfac/tokens", kfac::FactorSource::Tokens),
            ("ekfac/samples", kfac::FactorSource::Samples),
        ] {
            kfac::fit_with(&train, &one, src).unwrap();
            row.push((tag, get("ekfac")));
        }
        row.insert(0, ("exact/1 draw", get("exact")));
        row.push(("identity", get("identity")));
        // The empirical Fisher's own EK-FAC (recorded by `fit`), against the Gauss–Newton matrix.
        kfac::fit(&train, kfac::FactorSource::Tokens).unwrap();
        row.push(("empirical ekfac", get("ekfac")));
        eprintln!("damping {damping}: mean Spearman vs the exact Gauss-Newton inverse {row:?}");
        report.push((damping, row));
    }
    let v = |d: f64, k: &str| {
        report
            .iter()
            .find(|r| r.0 == d)
            .and_then(|r| r.1.iter().find(|x| x.0 == k))
            .unwrap()
            .1
    };
    for d in [0.1, 1.0] {
        // The recorded Fisher reaches `exact`: one draw of the Gauss–Newton matrix.
        assert!(v(d, "exact/1 draw") > 0.97, "{report:?}");
        assert!(v(d, "ekfac/samples") >= 0.95, "{report:?}");
        assert!(v(d, "ekfac/tokens") > v(d, "identity"), "{report:?}");
        // Fitting on the true Fisher beats fitting on the empirical one.
        assert!(
            v(d, "ekfac/tokens") > v(d, "empirical ekfac") + 0.03,
            "{report:?}"
        );
    }
    assert!(
        v(0.1, "ekfac/tokens") > v(0.1, "identity") + 0.05,
        "{report:?}"
    );
    assert!(v(1.0, "ekfac/tokens") >= 0.95, "{report:?}");
    assert!(v(0.1, "ekfac/tokens") >= 0.93, "{report:?}");
}

/// A Fisher store laid out differently from the training store is refused, naming it, and a
/// recorded true Fisher whose draws are gone is an error, not a silent empirical fallback.
#[test]
fn fisher_stores_must_match_the_training_store() {
    use inflow::curvature::fisher::{self, Fisher, FisherSamples};
    let m = model();
    let dir = scratch("layout");
    let a = index(&m, &dir.join("a"), 8, 8, 1);
    let mut f = features();
    f.modules = "layers.0.self_attn.q_proj".into();
    let opts = index_options(asset("train.jsonl"), 8, f, (8, 1, 1));
    let other = fisher::index_draw(&m, &opts, &dir.join("b"), 0, &Progress::default()).unwrap();
    let e = kfac::fit_with(
        &a,
        &FisherSamples::empirical(&other).unwrap(),
        kfac::FactorSource::Samples,
    )
    .expect_err("a Fisher over other layers must be refused")
    .to_string();
    assert!(
        e.contains("not laid out like") && e.contains("draw-0"),
        "{e}"
    );
    assert!(FisherSamples::from_stores(&a, vec![other], Fisher::True { draws: 1 }).is_err());
    fisher::record(&a, Fisher::True { draws: 1 }).unwrap();
    let e = curvature::load("exact", &a, &Options::default())
        .err()
        .expect("missing draws must be an error")
        .to_string();
    assert!(e.contains("draw 0"), "{e}");
}

#[test]
fn kfac_equals_the_explicit_kronecker_inverse() {
    let (_, dir, store, blocks) = indexed("kron", 12, 12);
    let damping = 0.3;
    let pre = kfac::KfacPreconditioner::load(&store, false, damping).unwrap();
    let t = candle_core::safetensors::load(
        dir.join("s/curvature/kfac.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let dim = store.dim();
    let mut rng = inflow::features::random::Stream::new(5, "v");
    let v: Vec<f32> = (0..dim).map(|_| rng.normal() as f32).collect();
    let mut got = v.clone();
    pre.apply(&mut got, dim).unwrap();
    for (l, b) in blocks.iter().enumerate().take(3) {
        let dense = |k: &str| -> Vec<Vec<f64>> {
            let q = t[&format!("Q{k}.{l}")].to_vec2::<f64>().unwrap();
            let lam = t[&format!("lam{k}.{l}")].to_vec1::<f64>().unwrap();
            let n = lam.len();
            (0..n)
                .map(|i| {
                    (0..n)
                        .map(|j| (0..n).map(|e| q[i][e] * lam[e] * q[j][e]).sum())
                        .collect()
                })
                .collect()
        };
        let (a, s) = (dense("A"), dense("S"));
        let lam_a = t[&format!("lamA.{l}")].to_vec1::<f64>().unwrap();
        let lam_s = t[&format!("lamS.{l}")].to_vec1::<f64>().unwrap();
        let mean = lam_s
            .iter()
            .map(|x| lam_a.iter().map(|y| x * y).sum::<f64>())
            .sum::<f64>()
            / b.len() as f64;
        let n = b.len();
        let f = faer::Mat::<f64>::from_fn(n, n, |p, r| {
            let (o, i, o2, i2) = (p / b.cols, p % b.cols, r / b.cols, r % b.cols);
            s[o][o2] * a[i][i2] + if p == r { damping * mean } else { 0.0 }
        });
        let rhs = faer::Mat::<f64>::from_fn(n, 1, |p, _| v[b.offset + p] as f64);
        use faer::linalg::solvers::Solve;
        let x = f.llt(faer::Side::Lower).unwrap().solve(&rhs);
        let num: f64 = (0..n)
            .map(|p| (x[(p, 0)] - got[b.offset + p] as f64).powi(2))
            .sum::<f64>()
            .sqrt();
        let den: f64 = (0..n).map(|p| x[(p, 0)].powi(2)).sum::<f64>().sqrt();
        assert!(
            num / den < 1e-4,
            "layer {}: relative error {}",
            b.name,
            num / den
        );
    }
}

#[test]
fn datainf_equals_its_closed_form_and_lissa_converges_to_exact() {
    let (m, _dir, store, blocks) = indexed("closed", 10, 4);
    let dim = store.dim();
    let (q, _) = queries(&m);
    let q = &q[..dim];
    let mut rows: Vec<Vec<f64>> = Vec::new();
    for s in 0..store.n_shards() {
        let (f, n) = store.shard_features(s).unwrap();
        rows.extend((0..n).map(|r| {
            f[r * dim..(r + 1) * dim]
                .iter()
                .map(|&x| x as f64)
                .collect()
        }));
    }
    let n = rows.len() as f64;
    // Closed form, block by block, in f64.
    let damping = 0.1;
    let mut expect = vec![0f64; dim];
    for b in &blocks {
        let r = b.offset..b.offset + b.len();
        let lam = damping
            * rows
                .iter()
                .map(|g| g[r.clone()].iter().map(|x| x * x).sum::<f64>())
                .sum::<f64>()
            / n
            / b.len() as f64;
        for k in r.clone() {
            expect[k] = q[k] as f64;
        }
        for g in &rows {
            let gb = &g[r.clone()];
            let c = gb
                .iter()
                .zip(&q[r.clone()])
                .map(|(a, b)| a * *b as f64)
                .sum::<f64>()
                / (lam + gb.iter().map(|x| x * x).sum::<f64>());
            for (k, gk) in r.clone().zip(gb) {
                expect[k] -= c * gk / n;
            }
        }
        for k in r {
            expect[k] /= lam;
        }
    }
    let mut got = q.to_vec();
    curvature::datainf::DataInf::new(&store, damping)
        .unwrap()
        .apply(&mut got, dim)
        .unwrap();
    let err = rel_err(&got, &expect);
    assert!(err < 1e-5, "DataInf vs closed form: {err}");

    // LiSSA (full batch) converges to the exact damped inverse.
    // LiSSA contracts at rate 1 − λ/s per iteration (s ≈ 1.5 λ_max): with the low-rank Fisher
    // of 10 samples it needs thousands of steps unless the damping is large.
    let opts = Options {
        damping: 50.0,
        lissa_iters: 4000,
        lissa_batch: 1000,
        lissa_tol: 1e-4,
        seed: 1,
    };
    let lissa = curvature::lissa::Lissa::new(&store, &opts).unwrap();
    let mut got = q.to_vec();
    lissa.apply(&mut got, dim).unwrap();
    let exact = curvature::exact::Exact::new(&store, 50.0).unwrap();
    let x = exact.solve(&q.iter().map(|&v| v as f64).collect::<Vec<_>>());
    let err = rel_err(&got, &x);
    let rep = lissa.report();
    eprintln!("{}", rep.summary);
    assert!(err < 1e-3, "LiSSA vs exact: {err}, report {rep:?}");
    // Converged means what it says: stopped by the rule before the maximum, with the
    // guaranteed error (≤ tol) and the residual on the full Fisher both small.
    assert!(rep.converged && rep.iterations < 4000, "{rep:?}");
    assert!(
        err <= opts.lissa_tol * 1.01,
        "the rule's bound holds: {err}"
    );
    assert!(rep.residual <= 1e-4, "{rep:?}");
    assert!(
        rep.summary.starts_with("LiSSA: ")
            && rep.summary.contains(": converged;")
            && rep.summary.contains("tolerance"),
        "{}",
        rep.summary
    );
    let t = &rep.trace[0];
    assert_eq!((rep.trace.len(), t.iterations), (1, rep.iterations));
    assert!(t.final_relative_change <= rep.change_tolerance);
    assert!(t.relative_change.last().unwrap() < t.relative_change.first().unwrap());
    // The report the influence estimator hands on carries the summary and the trace.
    let v = curvature::Preconditioner::report(&lissa).unwrap();
    assert_eq!(v["summary"], rep.summary.as_str());
    assert!(v["trace"][0]["relative_change"].is_array());

    // Too few iterations: not converged, and the residual says the system is not solved.
    let short = curvature::lissa::Lissa::new(
        &store,
        &Options {
            lissa_iters: 5,
            ..opts.clone()
        },
    )
    .unwrap();
    let mut got = q.to_vec();
    short.apply(&mut got, dim).unwrap();
    let rep = short.report();
    eprintln!("{}", rep.summary);
    assert!(!rep.converged && rep.iterations == 5, "{rep:?}");
    assert!(rep.summary.contains(": not converged;"), "{}", rep.summary);
    assert!(rep.residual > 1e-2, "{rep:?}");
}

#[test]
fn influence_does_not_depend_on_batch_size_or_shard_split() {
    let m = model();
    let dir = scratch("split");
    let a = index(&m, &dir.join("a"), 12, 12, 1);
    let b = index(&m, &dir.join("b"), 12, 5, 4);
    let (q, _) = queries(&m);
    let opts = Options::default();
    for name in ["ekfac", "datainf"] {
        let sa = scores(&a, curvature::load(name, &a, &opts).unwrap(), &q);
        let sb = scores(&b, curvature::load(name, &b, &opts).unwrap(), &q);
        for (x, y) in sa.iter().flatten().zip(sb.iter().flatten()) {
            assert!(
                (x - y).abs() <= 1e-3 * x.abs().max(1e-3),
                "{name}: {x} vs {y}"
            );
        }
    }
}

/// K-FAC is exact where theory says it is (Martens & Grosse 2015; Bernacchia et al. 2018): in a
/// deep linear network y = W₃W₂W₁x with a Gaussian likelihood, the output gradient of layer l is
/// δ_l = B_lᵀε with ε ~ N(0, I) independent of the layer input a_l, so each layer's Fisher
/// block is exactly E[a aᵀ] ⊗ E[δ δᵀ]. The expectation over ε is taken exactly (ε = √o e_k,
/// k = 1..o), gradients come from candle's autograd, and K-FAC and EK-FAC fitted from the
/// stored gradients must equal the explicit per-layer damped inverse.
#[test]
fn kfac_is_exact_per_layer_on_a_deep_linear_network() {
    use candle_core::{Device, Tensor, Var};
    use faer::linalg::solvers::Solve;
    use inflow::features::FeatureSpec;
    use inflow::model::LinearInfo;
    use inflow::store::StoreSpec;
    let dev = Device::Cpu;
    let shapes = [(4usize, 3usize), (5, 4), (2, 5)];
    let mut rng = inflow::features::random::Stream::new(11, "deep-linear");
    let ws: Vec<Var> = shapes
        .iter()
        .map(|&(o, i)| {
            let v: Vec<f64> = (0..o * i).map(|_| rng.normal()).collect();
            Var::from_tensor(&Tensor::from_vec(v, (o, i), &dev).unwrap()).unwrap()
        })
        .collect();
    let (n_x, n_out) = (40usize, shapes[2].0);
    let mut rows: Vec<f32> = Vec::new();
    for _ in 0..n_x {
        // Correlated inputs, so A is not a multiple of the identity.
        let z: Vec<f64> = (0..3).map(|_| rng.normal()).collect();
        let x = vec![z[0], 0.5 * z[0] + z[1], z[2] - 0.3 * z[1]];
        let x = Tensor::from_vec(x, (3, 1), &dev).unwrap();
        for k in 0..n_out {
            let mut eps = vec![0f64; n_out];
            eps[k] = (n_out as f64).sqrt();
            let eps = Tensor::from_vec(eps, (1, n_out), &dev).unwrap();
            let mut h = x.clone();
            for w in &ws {
                h = w.as_tensor().matmul(&h).unwrap();
            }
            // ∂/∂θ of εᵀf(x): the per-sample gradient of the Gaussian log-likelihood at y = f + ε.
            let loss = eps.matmul(&h).unwrap().sum_all().unwrap();
            let grads = loss.backward().unwrap();
            for w in &ws {
                let g = grads.get(w.as_tensor()).unwrap();
                rows.extend(
                    g.flatten_all()
                        .unwrap()
                        .to_vec1::<f64>()
                        .unwrap()
                        .iter()
                        .map(|&v| v as f32),
                );
            }
        }
    }
    let n = n_x * n_out;
    let fspec = FeatureSpec {
        projection: Projection::Full,
        seed: 0,
        loss: "gaussian".into(),
        layers: shapes
            .iter()
            .enumerate()
            .map(|(l, &(o, i))| LinearInfo {
                name: format!("w{l}"),
                d_out: o,
                d_in: i,
            })
            .collect(),
    };
    let dim = fspec.dim();
    assert_eq!(rows.len(), n * dim);
    let dir = scratch("deep-linear");
    let spec = StoreSpec::synthetic(serde_json::to_value(&fspec).unwrap(), Dtype::F32, dim, n);
    let store = Store::write_synthetic(&dir.join("s"), spec, n, |r| {
        rows[r.start * dim..r.end * dim].to_vec()
    })
    .unwrap();
    kfac::fit(&store, kfac::FactorSource::Samples).unwrap();
    let damping = 0.05;
    let blocks = blocks_of(&store);
    let v: Vec<f32> = (0..dim).map(|_| rng.normal() as f32).collect();
    for ekfac in [false, true] {
        let pre = kfac::KfacPreconditioner::load(&store, ekfac, damping).unwrap();
        let mut got = v.clone();
        pre.apply(&mut got, dim).unwrap();
        for b in &blocks {
            let len = b.len();
            // The layer's Fisher block from the gradients themselves, damped as `exact` does.
            let g = faer::Mat::<f64>::from_fn(n, len, |r, j| rows[r * dim + b.offset + j] as f64);
            let mut f = g.transpose() * &g * faer::Scale(1.0 / n as f64);
            let trace: f64 = (0..len).map(|j| f[(j, j)]).sum();
            for j in 0..len {
                f[(j, j)] += damping * trace / len as f64;
            }
            let rhs = faer::Mat::<f64>::from_fn(len, 1, |j, _| v[b.offset + j] as f64);
            let x = f.llt(faer::Side::Lower).unwrap().solve(&rhs);
            let err = (0..len)
                .map(|j| (x[(j, 0)] - got[b.offset + j] as f64).powi(2))
                .sum::<f64>()
                .sqrt()
                / (0..len).map(|j| x[(j, 0)].powi(2)).sum::<f64>().sqrt();
            eprintln!(
                "deep linear, {} ekfac={ekfac}: relative error {err:.2e}",
                b.name
            );
            assert!(
                err < 1e-4,
                "{} (ekfac={ekfac}): relative error {err}",
                b.name
            );
        }
    }
}

/// The tiny Llama fully fine-tuned for 2 epochs on the first `n` NI training samples.
fn trained_tiny(data: &Path, n: usize) -> LoadedModel {
    use inflow::data::tokens::Renderer;
    use inflow::train::{Method, TrainData, TrainOptions};
    let mut trained = model();
    let rs = inflow::data::read_samples(data, &alpaca(Some(n))).unwrap();
    let r = Renderer::new(&trained, Template::Auto, 64)
        .unwrap()
        .with_truncate(Truncate::Left);
    let seqs = rs
        .samples
        .iter()
        .map(|s| r.tokenize(s).unwrap().seq)
        .collect();
    let mut o = TrainOptions::lora(4, 8.0, "all");
    o.method = Method::Full {
        modules: "all".into(),
    };
    o.lr = 3e-3;
    o.epochs = 2;
    o.batch_size = 8;
    o.threads = 2;
    let d = scratch("grid-train");
    let s = inflow::train::train(
        &mut trained,
        &TrainData {
            seqs,
            identity: serde_json::json!({}),
        },
        &o,
        &d,
        false,
        &mut |_, _| {},
    )
    .unwrap();
    eprintln!("trained: loss {:?} -> {:?}", s.first_loss, s.last_loss);
    trained
}

/// The measurement behind the closing note's grid (not run by default; reads the NI split in
/// `../shared`): on the tiny Llama, random and after full fine-tuning on the same 3,000
/// samples, EK-FAC, K-FAC, DataInf and identity against two exact damped inverses:
/// - the empirical Fisher E_n[g_n g_nᵀ] of the training gradients;
/// - the true Fisher (= Gauss–Newton), from sampled-label pseudo-gradients, 2 draws per sample;
///   each approximation is then fitted on one draw.
///
/// Run with `cargo test --release --test influence grid -- --ignored --nocapture`.
#[test]
#[ignore]
fn grid_ekfac_vs_exact() {
    use inflow::curvature::exact::Exact;
    use inflow::curvature::fisher::{self, Fisher, FisherSamples};
    let n = 3000usize;
    let trained = trained_tiny(&ni_options(&features(), n).data, n);
    let random = model();
    for (mname, m) in [("random", &random), ("trained", &trained)] {
        for (modules, proj) in [
            ("layers.1.self_attn.q_proj", Projection::Full),
            ("layers.1.mlp.down_proj", Projection::Full),
            ("layers.0.mlp.down_proj", Projection::Full),
            ("layers.1.", Projection::Full),
            (
                "all",
                Projection::Logra {
                    rank_in: 4,
                    rank_out: 4,
                },
            ),
        ] {
            let mut f = features();
            f.modules = modules.into();
            f.projection = proj.clone();
            let base = scratch("grid");
            let opts = ni_options(&f, n);
            let p = Progress::default();
            kfac::run_index(m, &opts, &base, &p, &mut |_, _| {}).unwrap();
            let train = Store::open(&base).unwrap();
            let fishers: Vec<Store> = (0..2)
                .map(|k| fisher::index_draw(m, &opts, &base, k, &p).unwrap())
                .collect();
            let all: Vec<&Store> = fishers.iter().collect();
            let q = probe_features(m, &f, 16);
            for damping in [0.1, 1.0] {
                let o = Options {
                    damping,
                    ..Default::default()
                };
                for (fisher, exact_set, fit_set) in [
                    ("empirical", vec![&train], vec![&train]),
                    ("true", all.clone(), all[..1].to_vec()),
                ] {
                    let ex = |bd| Box::new(Exact::over_blocks(&exact_set, damping, bd).unwrap());
                    let exact = scores(&train, ex(false), &q);
                    let mut line = format!("{mname} {modules} damping={damping} {fisher}:");
                    if blocks_of(&train).len() > 1 {
                        let s = scores(&train, ex(true), &q);
                        line += &format!(" exact-blockdiag={:.3}", mean_spearman(&s, &exact));
                    }
                    if fisher == "true" {
                        let e1 = scores(
                            &train,
                            Box::new(Exact::over(&fit_set, damping).unwrap()),
                            &q,
                        );
                        line += &format!(" exact-1draw={:.3}", mean_spearman(&e1, &exact));
                    }
                    let fit_samples = if fisher == "true" {
                        let one = vec![Store::open(fit_set[0].dir()).unwrap()];
                        FisherSamples::from_stores(&train, one, Fisher::True { draws: 1 })
                    } else {
                        FisherSamples::empirical(&train)
                    }
                    .unwrap();
                    for src in [kfac::FactorSource::Tokens, kfac::FactorSource::Samples] {
                        kfac::fit_with(&train, &fit_samples, src).unwrap();
                        for name in ["ekfac", "kfac"] {
                            let s = scores(&train, curvature::load(name, &train, &o).unwrap(), &q);
                            line += &format!(" {name}/{src:?}={:.3}", mean_spearman(&s, &exact));
                        }
                    }
                    for name in ["datainf", "identity"] {
                        let s = scores(&train, curvature::load(name, fit_set[0], &o).unwrap(), &q);
                        line += &format!(" {name}={:.3}", mean_spearman(&s, &exact));
                    }
                    eprintln!("{line}");
                }
            }
        }
    }
}

//! The method registry is the one place a method enters: a throw-away method registered here,
//! and nowhere else, is listed, scored by the `score` pipeline into a Parquet file, and
//! evaluated by the LDS pipeline, with no other edit.

use inflow::data::tokens::Template;
use inflow::data::Format;
use inflow::methods::{self, Context, Method, Need, Scored};
use inflow::pipeline::{self, Silent};
use inflow::scores::ScoreResult;

/// score(q, z) = q + the training row of z: row order, known in advance, a different value
/// per query so that top-k, the Parquet file and LDS predictions can all be checked.
struct RowIndex;

impl Method for RowIndex {
    fn name(&self) -> &str {
        "test-row-index"
    }
    fn about(&self) -> &str {
        "test only: the training row number plus the query number"
    }
    fn needs(&self) -> &[Need] {
        &[Need::Model]
    }
    fn score(&self, ctx: &Context) -> inflow::Result<Scored> {
        let samples = inflow::data::read_samples(&ctx.train.data, &ctx.train.read)?.samples;
        let (n, nq) = (samples.len(), ctx.queries.len());
        let full: Vec<f32> = (0..nq)
            .flat_map(|q| (0..n).map(move |j| (q + j) as f32))
            .collect();
        Ok(Scored {
            result: ScoreResult {
                topk: methods::top_k_of(&full, nq, ctx.top_k),
                full: Some(full),
                n_train: n,
                part: None,
            },
            method: self.name().into(),
            sign_convention: "test: larger row, larger score".into(),
            report: None,
            query_rows: Vec::new(),
            train_ids: samples.into_iter().map(|s| s.id).collect(),
            per_train: None,
        })
    }
}

use inflow_testkit::{asset as assets, scratch};

#[test]
fn a_registered_method_reaches_score_and_lds() {
    let dir = scratch("methods");
    let model = dir.join("model");
    inflow::model::tiny::write_random(&model, 16, 2, 1).unwrap();

    assert!(methods::by_name("test-row-index").is_err());
    methods::register(Box::new(RowIndex)).unwrap();
    assert!(methods::names().contains(&"test-row-index".to_string()));
    assert!(methods::describe().contains("test-row-index"));
    assert!(
        methods::register(Box::new(RowIndex)).is_err(),
        "a name is registered once"
    );

    // `score`: the store's training set, top-k per query, a Parquet file pandas reads.
    let store = dir.join("store");
    let m = pipeline::score::load_model(&model, &Silent).unwrap();
    let opts = inflow::index::IndexOptions {
        part: None,
        data: assets("train.jsonl"),
        read: inflow::data::ReadOptions {
            limit: Some(6),
            ..Default::default()
        },
        features: inflow::index::FeatureOptions {
            projection: inflow::features::Projection::Logra {
                rank_in: 2,
                rank_out: 2,
            },
            seed: 0,
            modules: "all".into(),
            template: Template::Plain,
            max_tokens: 48,
            truncate: Default::default(),
            labels: Default::default(),
        },
        dtype: inflow::store::Dtype::F32,
        shard_size: 4,
        batch_size: 1,
        threads: 1,
    };
    pipeline::index::index(&m, &opts, &store, "index", &Silent).unwrap();
    let out = dir.join("top.parquet");
    let so = pipeline::score::score(
        &pipeline::score::ScoreOptions {
            store: store.clone(),
            queries: assets("probe.jsonl"),
            format: Format::Auto,
            limit: Some(3),
            method: "test-row-index".into(),
            options: Default::default(),
            top_k: 2,
            out: Some(out.clone()),
            force: false,
            full: None,
            model: None,
            aggregate: None,
            threads: 1,
        },
        &Silent,
    )
    .unwrap();
    assert_eq!(so.method, "test-row-index");
    assert_eq!(so.result.topk.len(), 3);
    for (q, top) in so.result.topk.iter().enumerate() {
        assert_eq!(top, &vec![(5, (q + 5) as f32), (4, (q + 4) as f32)]);
    }
    let (cols, meta) = inflow::scores::table::read_table(&out).unwrap();
    let train_ids = cols
        .iter()
        .find(|(n, _)| n == "train_id")
        .unwrap()
        .1
        .as_str()
        .unwrap()
        .to_vec();
    assert_eq!(train_ids[0], so.train_ids[5]);
    assert!(format!("{meta:?}").contains("test-row-index"));

    // `eval lds`: the same name, the same registry, no other edit.
    let lds_out = dir.join("lds");
    let report = pipeline::lds::run(
        &pipeline::lds::LdsOptions {
            model: model.clone(),
            data: assets("train.jsonl"),
            format: Format::Auto,
            format_name: "auto".into(),
            queries: assets("probe.jsonl"),
            limit: 6,
            subsets: 3,
            ratio: 0.5,
            methods: vec!["test-row-index".into()],
            scores: Vec::new(),
            epochs: 1,
            lr: 1e-2,
            lora_rank: 2,
            lora_modules: "q,v".into(),
            batch_size: 2,
            max_tokens: 48,
            rank: 2,
            damping: 0.1,
            template: Template::Plain,
            truncate: Default::default(),
            seed: 0,
            out: lds_out.clone(),
            threads: 1,
        },
        &Silent,
    )
    .unwrap();
    assert_eq!(report.methods.len(), 1);
    assert_eq!(report.methods[0].name, "test-row-index");
    assert_eq!(
        report.methods[0].sign_convention,
        "test: larger row, larger score"
    );
    let saved = inflow::store::npy::NpyFile::open(&lds_out.join("scores/test-row-index.npy"))
        .unwrap()
        .to_f32_vec();
    let nq = report.n_queries;
    assert_eq!(saved.len(), nq * 6);
    assert_eq!(&saved[6..12], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
}

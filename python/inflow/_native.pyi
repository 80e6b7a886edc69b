"""Type stubs of ``inflow._native``, the Rust extension module (crates/inflow-py) behind ``inflow``.

Every function runs a pipeline of the inflow library with the GIL released and writes the same
files as the ``inflow`` CLI verb of the same name; defaults are the CLI's. ``progress`` is a sink
object (``inflow.progress``) or None; Ctrl-C stops the work between micro-batches and raises
``KeyboardInterrupt`` (an interrupted ``index`` resumes when called again). ``threads``: model
workers for this call (default: all cores); rayon's pool for score blocks and curvature is sized
once per process by the first call (see ``pool_threads``).

Notation: g_z is the per-sample gradient feature of training sample z, g_q a query's, both
featurized the same way (METHODS.md §1): for each tracked Linear, G = Σ_t δ_t x_tᵀ over the
response tokens, projected by LoGra (P_outᵀ G P_in) or a dense Rademacher JL map.
"""

from os import PathLike
from typing import Any, Optional, Sequence, Union

_Path = Union[str, PathLike[str]]

__version__: str

class Error(ValueError):
    """An error of the inflow library; ``str(e)`` is its one-line message naming the file,
    line or field at fault. ``path``: that file (or None); ``line``: the 1-based line or row of
    malformed input (or None); ``kind``: io, bad_input, model, store, tensor, parquet or other.
    Errors about in-memory records (``inflow.inputs``) also have ``record``, 0-based."""

    path: Optional[PathLike[str]]
    line: Optional[int]
    kind: str
    record: Optional[int]

class Model:
    """A Llama-family causal LM (``.gguf`` file or Hugging Face folder), loaded once in f32."""

    def __init__(self, path: _Path, progress: Any = None) -> None: ...
    @property
    def path(self) -> PathLike[str]: ...
    @property
    def kind(self) -> str:
        """``gguf`` or ``hf``."""
    @property
    def sha256(self) -> str:
        """sha256 of the weights, as stores record it (``spec.model.sha256``)."""
    @property
    def n_params(self) -> int: ...

def index(
    model: Model,
    data: _Path,
    out: _Path,
    *,
    format: str = "auto",
    limit: Optional[int] = None,
    skip_bad: bool = False,
    projection: str = "logra",
    rank: int = 16,
    dim: int = 8192,
    seed: int = 0,
    modules: str = "all",
    template: str = "auto",
    max_tokens: int = 512,
    truncate: str = "middle",
    dtype: str = "f16",
    shard_size: int = 64,
    batch_size: int = 1,
    threads: Optional[int] = None,
    progress: Any = None,
) -> dict:
    """``inflow index``: per-sample gradient features of ``data`` into the store ``out``.

    G_l(z) = Σ_t δ_t x_tᵀ for each tracked Linear l (``modules``), with x_t its input and δ_t
    the gradient of the response tokens' loss at its output. ``projection="logra"``: the
    feature is P_outᵀ G_l P_in per layer, seeded Gaussian P of ``rank`` columns (rank² per layer);
    ``"dense"``: Pᵀ vec(G) with P ∈ {±1/√dim}^{D×dim}; ``"full"``: vec(G). Shards of
    ``shard_size`` rows are written atomically, so a stopped run resumes. Returns the summary
    (n_samples, n_written, shards_written, shards_reused, dim, tokens, cuts, …)."""

def index_checkpoints(
    model: _Path,
    data: _Path,
    out: _Path,
    *,
    adapter: Optional[_Path] = None,
    checkpoints: Sequence[_Path] = ...,
    lora_grads: bool = False,
    adam: bool = False,
    format: str = "auto",
    limit: Optional[int] = None,
    skip_bad: bool = False,
    projection: str = "logra",
    rank: int = 16,
    dim: int = 8192,
    seed: int = 0,
    modules: str = "all",
    template: str = "auto",
    max_tokens: int = 512,
    truncate: str = "middle",
    dtype: str = "f16",
    shard_size: int = 64,
    batch_size: int = 1,
    threads: Optional[int] = None,
    progress: Any = None,
) -> list[dict]:
    """``inflow index --adapter CK`` / ``--checkpoints CK1 CK2 …``: ``index`` with the model
    (loaded from its path) at each training checkpoint; one store at ``out`` for one checkpoint,
    else one per checkpoint at ``out/{checkpoint name}``, each recording the checkpoint's step and
    learning rate η_c. ``lora_grads``: features of the LoRA parameters (A and B of every adapter)
    instead of the base Linears; ``adam`` (with ``lora_grads``): LESS's Adam-update features
    Γ = m'/(√v'+ε) from the checkpoint's optimizer moments. Returns one {checkpoint, out,
    seconds, summary} per checkpoint."""

def fit(
    store: _Path,
    *,
    fisher: str = "empirical",
    factors: str = "samples",
    draws: int = 1,
    model: Optional[_Path] = None,
    batch_size: int = 1,
    threads: Optional[int] = None,
    progress: Any = None,
) -> dict:
    """``inflow fit``: K-FAC and EK-FAC curvature of a store.

    H is a Fisher: ``empirical`` F = 1/n Σ_i g_i g_iᵀ over the stored gradients, or ``true``
    (= Gauss–Newton for softmax cross-entropy) from pseudo-gradients with labels sampled from
    the model, ``draws`` extra model passes. Per layer, K-FAC H_l ≈ A ⊗ S with
    ``factors="samples"`` (A = E[GᵀG], S = E[GGᵀ] of the per-sample gradients) or ``"tokens"``
    (A = Σ x̃x̃ᵀ, S = Σ δ̃δ̃ᵀ); EK-FAC keeps the eigenbases Q_A, Q_S and refits the eigenvalues
    Λ = E[(Q_Sᵀ G Q_A)²]. Returns {out, fisher, n_samples}."""

def score(
    store: _Path,
    queries: _Path,
    *,
    method: str = "cosine",
    top_k: int = 10,
    format: str = "auto",
    limit: Optional[int] = None,
    preconditioner: str = "ekfac",
    damping: float = 0.1,
    lissa_iters: int = 300,
    lissa_tol: float = 1e-2,
    lissa_batch: int = 64,
    aggregate: Optional[str] = None,
    rerank: Optional[int] = None,
    out: Optional[_Path] = None,
    full: Optional[_Path] = None,
    force: bool = False,
    model: Optional[_Path] = None,
    threads: Optional[int] = None,
    progress: Any = None,
) -> dict:
    """``inflow score``: every query against every training sample, top ``top_k`` per query
    (or one score per sample with ``aggregate="mean"``), written as Parquet to ``out``
    (default STORE/scores-METHOD.parquet). An existing ``out``/``full`` is replaced only with
    ``force=True``.

    Methods (``methods()``): ``cosine`` cos(g_q, g_z) = g_q·g_z / (‖g_q‖‖g_z‖); ``dot``
    g_q·g_z; ``repsim`` / ``repsim-mean`` cosine of final hidden states (last prompt token /
    mean over the response); ``influence`` I(z, q) = g_qᵀ (H + λI)⁻¹ g_z with ``preconditioner``
    identity | kfac | ekfac | datainf | lissa | exact (also names of their own), damping per layer
    λ_l = ``damping`` × the mean eigenvalue of layer l's Fisher; LiSSA iterates
    v_{t+1} = g + (I − (H_B + Λ)/s) v_t, x_t = v_t/s (``lissa_*``); ``tracin``
    Σ_c η_c g_c(q)·g_c(z) and ``less`` Σ_c η_c cos(Γ_c(z), g_c(q)) over checkpoint stores; ``icp``
    Δ_q(z) = log p(a_q | z ⊕ q) − log p(a_q | q); ``one-step`` ℓ_q(θ) − ℓ_q(θ − η∇ℓ(z));
    ``encoder`` cos(φ_q, φ_z) on an encoder store. Sign: for gradient methods a positive score
    means a gradient step on (up-weighting) z lowers the query's loss to first order.

    Returns {out, full, report_path, method, sign_convention, query_ids, per_train, report}."""

def methods() -> list[dict]:
    """Every scoring method of the registry: [{name, needs, about}] (needs ⊆ store, curvature,
    checkpoints, model)."""

def select(
    data: _Path,
    out: _Path,
    *,
    force: bool = False,
    method: str = "top",
    format: str = "auto",
    scores: Optional[_Path] = None,
    size: Optional[str] = None,
    threshold: float = 0.9,
    store: Optional[_Path] = None,
    queries: Optional[_Path] = None,
    seed_set: Optional[_Path] = None,
    seed_method: Optional[str] = None,
    preconditioner: str = "ekfac",
    clusters: int = 32,
    quality_threshold: float = 0.0,
    quality_top: Optional[float] = None,
    raw_features: bool = False,
    seed: int = 0,
    model: Optional[_Path] = None,
    threads: Optional[int] = None,
    progress: Any = None,
) -> dict:
    """``inflow select``: ``top`` — the best ``size`` samples by score (ties by id); ``gdig`` —
    G-DIG: keep z with mean seed-set score s(z) = 1/|S| Σ_{q∈S} I(z, q) above
    ``quality_threshold`` (or the top ``quality_top`` fraction), k-means++ (``clusters``, seeded)
    over their L2-normalised gradient features, then take evenly across clusters; ``icp`` —
    samples with score > ``threshold``. Writes the picks in ``data``'s format to ``out`` and a
    manifest to OUT.selection.{parquet,json}; existing ones are replaced only with
    ``force=True``. Returns {candidates, details, manifest, out, selected}."""

def open_store(path: _Path) -> dict:
    """The store at ``path`` as the library reads it: {dir, manifest, n_samples, dim, complete,
    whole}."""

def checkpoint_stores(path: _Path) -> list[str]:
    """The checkpoint stores of ``path`` ordered by training step: ``path`` itself when it is
    one, else its subfolders that are (what ``score`` with ``tracin`` or ``less`` sums over)."""

def write_tiny_model(path: _Path, hidden: int = 16, layers: int = 2, seed: int = 0) -> None:
    """Writes the library's tiny random Llama (byte tokenizer, tied embeddings) as a Hugging Face
    folder: for fast tests and examples without a download."""

def pool_threads() -> Optional[int]:
    """Threads of rayon's global pool in this process (set by the first call), or None."""

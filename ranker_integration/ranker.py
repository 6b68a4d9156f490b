"""An example downstream ranker in TensorFlow/Keras: a DCN (or MLP) over ID, context and HLLM features.

    result = train_ranker(ts.split("train"), ts.split("test"), fc, cfg.ranker, use_hllm=True, seed=42)
    result.auc, result.gauc                              # on the held-out (later) time split
    export_ranker(result, "outputs/ranker/saved_model")   # TF SavedModel + ranker_meta.json
    ranker = load_ranker("outputs/ranker/saved_model"); ranker.score(inputs)

Inputs, all named, so a serving system can feed them from anywhere:

    user_id, item_id      string [B, 1]   hashed into learned ID embeddings
    hour, weekday         int64  [B, 1]   context: when the request happens (UTC)
    <each HLLM feature>   float32 [B, d]  by the feature config; only with use_hllm

Scalar HLLM features enter as log1p (a sequence length, an age in hours; -1 stays -1 for "unknown"),
the cosine score as it is; each embedding is L2-normalised and linearly projected to
`ranker.embedding_projection_dim` (8) inside the model (None: the raw vector). `model_inputs` makes these from a label frame and the
assembled features, and is what both training and `RequestScorer` call.

DCN: x0 = concat(inputs); cross layers x_{l+1} = x0 * (W x_l + b) + x_l (explicit feature crosses, e.g.
user embedding x item embedding), then an MLP, then a sigmoid.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from feature_gen.config import RankerConfig
from ranker_integration.feature_config import FeatureConfig
from ranker_integration.metrics import auc, gauc

ID_BINS = 100_003  # hashing bins per ID column (a prime; collisions cost little at MovieLens scale)
META_FILE = "ranker_meta.json"


def _configure_tensorflow() -> None:
    import tensorflow as tf

    try:  # only possible before TF's runtime starts; the machine has 2 cores shared with other jobs
        tf.config.threading.set_intra_op_parallelism_threads(2)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:
        pass


def _scalar_transform(values: np.ndarray, per: float = 1.0) -> np.ndarray:
    out = np.full(values.shape, -1.0, dtype=np.float32)
    known = values >= 0
    out[known] = np.log1p(values[known] / per)
    return out


def model_inputs(frame: pd.DataFrame, features: dict[str, np.ndarray], fc: FeatureConfig, use_hllm: bool) -> dict[str, np.ndarray]:
    """The model's named inputs for rows (user_id, item_id, timestamp) and their assembled features."""
    ts = pd.to_datetime(frame["timestamp"].to_numpy(dtype=np.int64), unit="s", utc=True)
    inputs = {
        "user_id": frame["user_id"].astype(str).to_numpy(dtype=object).reshape(-1, 1),
        "item_id": frame["item_id"].astype(str).to_numpy(dtype=object).reshape(-1, 1),
        "hour": np.asarray(ts.hour, dtype=np.int64).reshape(-1, 1),
        "weekday": np.asarray(ts.weekday, dtype=np.int64).reshape(-1, 1),
    }
    if use_hllm:
        for spec in fc.features:
            values = np.asarray(features[spec.name], dtype=np.float32)
            if spec.function == "age_seconds":
                values = _scalar_transform(values, per=3600.0)
            elif spec.field == "seq_len":
                values = _scalar_transform(values)
            inputs[spec.name] = values
    return inputs


def _cross_layer_class():
    import keras

    @keras.saving.register_keras_serializable(package="hllm_ranker")
    class CrossLayer(keras.layers.Layer):
        """One DCN cross layer: x0 * (W x + b) + x."""

        def build(self, input_shape):
            dim = input_shape[0][-1]
            self.dense = keras.layers.Dense(dim)
            self.dense.build((None, dim))

        def call(self, inputs):
            x0, x = inputs
            return x0 * self.dense(x) + x

    return CrossLayer


def build_ranker(cfg: RankerConfig, dense_dims: dict[str, int]):
    """The Keras model; `dense_dims` maps each float input (HLLM features) to its width."""
    import keras

    inputs, parts = {}, []
    for name in ("user_id", "item_id"):
        inputs[name] = keras.Input(shape=(1,), dtype="string", name=name)
        hashed = keras.layers.Hashing(num_bins=ID_BINS, name=f"{name}_hash")(inputs[name])
        emb = keras.layers.Embedding(ID_BINS, cfg.id_embedding_dim, name=f"{name}_embedding")(hashed)
        parts.append(keras.layers.Flatten()(emb))
    for name, size, width in (("hour", 24, 4), ("weekday", 7, 3)):
        inputs[name] = keras.Input(shape=(1,), dtype="int64", name=name)
        parts.append(keras.layers.Flatten()(keras.layers.Embedding(size, width, name=f"{name}_embedding")(inputs[name])))
    for name, dim in dense_dims.items():
        inputs[name] = keras.Input(shape=(dim,), dtype="float32", name=name)
        if dim > 1 and cfg.embedding_projection_dim:  # an embedding: unit length, then a learned projection
            unit = keras.layers.UnitNormalization(name=f"{name}_unit")(inputs[name])  # a zero default stays zero
            parts.append(keras.layers.Dense(cfg.embedding_projection_dim, name=f"{name}_projection")(unit))
        else:
            parts.append(inputs[name])
    x0 = keras.layers.Concatenate(name="features")(parts)
    x = x0
    if cfg.model == "dcn":
        cross = _cross_layer_class()
        for i in range(cfg.cross_layers):
            x = cross(name=f"cross_{i}")([x0, x])
    for i, units in enumerate(cfg.hidden_units):
        x = keras.layers.Dense(units, activation="relu", name=f"deep_{i}")(x)
    out = keras.layers.Dense(1, activation="sigmoid", name="click_probability")(x)
    return keras.Model(inputs=inputs, outputs=out, name=f"ranker_{cfg.model}")


def _tensors(inputs: dict[str, np.ndarray]) -> dict:
    import tensorflow as tf

    return {k: tf.constant(v.astype(str) if v.dtype == object else v) for k, v in inputs.items()}


def _dataset(inputs: dict[str, np.ndarray], y: np.ndarray | None, batch_size: int, seed: int | None = None):
    """A tf.data pipeline: Keras 3 takes string inputs only as tensors. Shuffled with `seed` when given."""
    import tensorflow as tf

    tensors = _tensors(inputs)
    ds = tf.data.Dataset.from_tensor_slices(tensors if y is None else (tensors, y))
    if seed is not None:
        ds = ds.shuffle(len(next(iter(inputs.values()))), seed=seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size)


def predict(model, inputs: dict[str, np.ndarray], batch_size: int = 4096) -> np.ndarray:
    """Click probabilities [n] of a Keras ranker for `model_inputs` output."""
    return model.predict(_dataset(inputs, None, batch_size), verbose=0)[:, 0]


@dataclass
class RankerResult:
    model: object  # keras.Model
    use_hllm: bool
    auc: float
    gauc: float
    train_auc: float
    train_rows: int
    test_rows: int
    train_seconds: float
    bundle_version: str
    feature_names: list[str]
    dense_dims: dict[str, int]
    history: dict = field(default_factory=dict)  # keras loss per epoch

    def summary(self) -> dict:
        return {"use_hllm": self.use_hllm, "auc": self.auc, "gauc": self.gauc, "train_auc": self.train_auc,
                "train_rows": self.train_rows, "test_rows": self.test_rows,
                "train_seconds": round(self.train_seconds, 2), "bundle_version": self.bundle_version,
                "features": self.feature_names, "loss": self.history.get("loss", [])}


def train_ranker(train, test, fc: FeatureConfig, cfg: RankerConfig, use_hllm: bool, seed: int = 0,
                 verbose: int = 0) -> RankerResult:
    """Fit on `train` (a TrainingSet), report AUC and GAUC on `test`. Same seed and data give the same
    initial weights and batch order, so runs with and without the HLLM features differ only in them."""
    _configure_tensorflow()
    import keras

    keras.utils.set_random_seed(seed)
    x_train = model_inputs(train.frame, train.features, fc, use_hllm)
    x_test = model_inputs(test.frame, test.features, fc, use_hllm)
    dense_dims = {k: v.shape[1] for k, v in x_train.items() if k in fc.names}
    model = build_ranker(cfg, dense_dims)
    model.compile(optimizer=keras.optimizers.Adam(cfg.learning_rate), loss="binary_crossentropy")
    y = train.frame["label"].to_numpy(dtype=np.float32)
    started = time.perf_counter()
    hist = model.fit(_dataset(x_train, y, cfg.batch_size, seed), epochs=cfg.epochs, shuffle=False, verbose=verbose)
    seconds = time.perf_counter() - started
    test_scores = predict(model, x_test)
    train_scores = predict(model, x_train)
    labels = test.frame["label"].to_numpy()
    return RankerResult(
        model=model, use_hllm=use_hllm, auc=auc(labels, test_scores),
        gauc=gauc(test.frame["user_id"].to_numpy(), labels, test_scores),
        train_auc=auc(y, train_scores), train_rows=len(y), test_rows=len(labels), train_seconds=seconds,
        bundle_version=train.bundle_version, feature_names=list(dense_dims), dense_dims=dense_dims,
        history={k: [float(v) for v in vals] for k, vals in hist.history.items()},
    )


def export_ranker(result: RankerResult, path: str | Path) -> Path:
    """Write the model as a TF SavedModel (serving signature `serve`) plus ranker_meta.json (bundle
    version, feature names and widths, metrics): a ranker must not be fed another bundle's embeddings."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    result.model.export(str(path), format="tf_saved_model", verbose=False)
    meta = result.summary() | {"dense_dims": result.dense_dims}
    (path / META_FILE).write_text(json.dumps(meta, indent=2))
    return path


class SavedRanker:
    """A ranker loaded from its SavedModel: no Keras or project code needed to score."""

    def __init__(self, path: str | Path):
        import tensorflow as tf

        _configure_tensorflow()
        self.path = Path(path)
        meta_path = self.path / META_FILE
        if not meta_path.is_file():
            raise FileNotFoundError(f"{meta_path}: missing (not a ranker exported by export_ranker)")
        self.meta = json.loads(meta_path.read_text())
        self._tf = tf
        self._model = tf.saved_model.load(str(self.path))

    @property
    def bundle_version(self) -> str:
        return self.meta["bundle_version"]

    @property
    def use_hllm(self) -> bool:
        return bool(self.meta["use_hllm"])

    def score(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        tf = self._tf
        feed = {}
        for name, value in inputs.items():
            if name in ("user_id", "item_id"):
                feed[name] = tf.constant(np.asarray(value).astype(str))
            elif name in ("hour", "weekday"):
                feed[name] = tf.constant(value, dtype=tf.int64)
            elif name in self.meta["dense_dims"]:
                feed[name] = tf.constant(value, dtype=tf.float32)
        return self._model.serve(feed).numpy()[:, 0]


def load_ranker(path: str | Path) -> SavedRanker:
    return SavedRanker(path)

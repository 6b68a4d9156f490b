"""The ranker's feature config: which stage-3 features it consumes, and how to check that against reality.

    fc = load_feature_config("ranker_integration/feature_config.yaml")   # schema errors name the field
    report = validate_feature_config(fc, store_cfg, "outputs/bundles/hllm-…")   # FeatureConfigError if wrong
    pinned = pin_to_bundle(fc, manifest)     # `any` -> the bundle's version, `item_dim` -> its width

The validator checks every feature against the Feast feature repo as registered (the view exists, has
the field, the field's type matches dtype and vector-ness, the entity is the view's) and against the
bundle manifest (checksums, the pinned version, embedding widths); every problem is reported, one line
each, naming the feature and the key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from feature_gen.config import read_data_file

SHIPPED_CONFIG = Path(__file__).with_name("feature_config.yaml")  # the template in this package
ANY_VERSION = "any"
ITEM_DIM = "item_dim"
# request-time function -> number of inputs. late_fusion: the bundle's click head (discriminative
# bundles, manifest fusion_head late; onnx/late_fusion_head.onnx) over the user and item embeddings
FUNCTIONS = {"cosine": 2, "age_seconds": 1, "late_fusion": 2}
_DURATION = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
# Feast field type -> (dtype, is a vector)
_FEAST_TYPES = {
    "Array(Float32)": ("float32", True), "Array(Float64)": ("float64", True), "Array(Int64)": ("int64", True),
    "Float32": ("float32", False), "Float64": ("float64", False), "Int64": ("int64", False),
    "Int32": ("int32", False), "String": ("string", False), "Array(String)": ("string", True),
}


class FeatureConfigError(ValueError):
    """A feature config that is malformed or does not match the store or the bundle; one line per problem."""


def parse_staleness(value: Any) -> Optional[timedelta]:
    """`30d` / `12h` / `15m` / `90s` -> timedelta; `none` (or null) -> None (never stale)."""
    if value is None or (isinstance(value, str) and value.strip().lower() == "none"):
        return None
    match = _DURATION.match(str(value).strip())
    if not match:
        raise ValueError(f"expected a duration like 30d, 12h, 15m, 90s or `none`; got {value!r}")
    return timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})


class FeatureSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    source: Literal["view", "request"]
    view: Optional[str] = None
    field: Optional[str] = None
    entity: Optional[Literal["user", "item"]] = None
    function: Optional[str] = None
    inputs: list[str] = Field(default_factory=list)
    dtype: Literal["float32", "float64", "int64", "int32"]
    dimension: Union[int, Literal["item_dim"]]
    default: Union[float, list[float]]
    max_staleness: Optional[str] = None
    description: str = ""

    @field_validator("dimension")
    @classmethod
    def _positive(cls, v):
        if isinstance(v, int) and v < 1:
            raise ValueError(f"expected a positive integer or 'item_dim'; got {v}")
        return v

    @field_validator("max_staleness", mode="before")
    @classmethod
    def _duration(cls, v):
        parse_staleness(v)
        return None if v is None else str(v)

    @model_validator(mode="after")
    def _source_fields(self) -> "FeatureSpec":
        if self.source == "view":
            missing = [k for k in ("view", "field", "entity") if getattr(self, k) is None]
            if missing:
                raise ValueError(f"source 'view' needs {', '.join(missing)}")
            if self.function or self.inputs:
                raise ValueError("source 'view' takes no function/inputs")
        else:
            if self.function not in FUNCTIONS:
                raise ValueError(f"function: expected one of {', '.join(FUNCTIONS)}; got {self.function!r}")
            if len(self.inputs) != FUNCTIONS[self.function]:
                raise ValueError(f"function {self.function} takes {FUNCTIONS[self.function]} input(s); got {len(self.inputs)}")
        if isinstance(self.default, list) and isinstance(self.dimension, int) and len(self.default) != self.dimension:
            raise ValueError(f"default has {len(self.default)} values but dimension is {self.dimension}")
        return self

    @property
    def staleness(self) -> Optional[timedelta]:
        return parse_staleness(self.max_staleness)

    @property
    def is_vector(self) -> bool:
        return self.dimension == ITEM_DIM or (isinstance(self.dimension, int) and self.dimension > 1)


class FeatureConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal[1] = 1
    bundle_version: str = Field(pattern=r"^[A-Za-z0-9._-]+$")
    features: list[FeatureSpec] = Field(min_length=1)

    @model_validator(mode="after")
    def _names_and_inputs(self) -> "FeatureConfig":
        names = [f.name for f in self.features]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"feature name(s) declared twice: {', '.join(dupes)}")
        for i, f in enumerate(self.features):
            for ref in f.inputs:
                if ":" not in ref and ref not in names:
                    raise ValueError(f"features[{i}] ({f.name}).inputs: {ref!r} is neither a feature of this file nor a view:field reference")
        return self

    def feature(self, name: str) -> FeatureSpec:
        for f in self.features:
            if f.name == name:
                return f
        raise KeyError(name)

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.features]

    def scalars_only(self) -> "FeatureConfig":
        """This config without its vector features (the embeddings): what a ranker gains from the
        scalar HLLM features alone (the demo's and benchmarks/ranker_inputs.py's middle row)."""
        return self.model_copy(update={"features": [f for f in self.features if not f.is_vector]})


def _one_line(exc: ValidationError, raw: dict) -> str:
    err = exc.errors()[0]
    loc = list(err["loc"])
    parts = []
    for i, p in enumerate(loc):
        if isinstance(p, int):
            parts[-1] += f"[{p}]"
            if loc[i - 1] == "features":
                try:
                    parts[-1] += f" ({raw['features'][p]['name']})"
                except (KeyError, IndexError, TypeError):
                    pass
        else:
            parts.append(str(p))
    # pydantic adds the union member / literal name to the location; keep the user's keys only
    parts = [p for p in parts if p not in ("int", "float", "list[float]", "literal['item_dim']")]
    path = ".".join(parts) or "<top level>"
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = "unknown key"
    elif err["type"] == "missing":
        msg = "required key is missing"
    elif "input" in err and not isinstance(err["input"], (dict, list)):
        msg += f"; got {err['input']!r}"
    more = len(exc.errors()) - 1
    return f"{path}: {msg}" + (f" (+{more} more)" if more else "")


def feature_config_from_dict(raw: Any, source: str = "<dict>") -> FeatureConfig:
    if not isinstance(raw, dict):
        raise FeatureConfigError(f"{source}: expected a mapping with bundle_version and features; got {type(raw).__name__}")
    try:
        return FeatureConfig.model_validate(raw)
    except ValidationError as exc:
        raise FeatureConfigError(f"{source}: {_one_line(exc, raw)}") from None


def load_feature_config(path: str | Path) -> FeatureConfig:
    path = Path(path)
    raw = read_data_file(path, FeatureConfigError, f"{path}: feature config not found")
    return feature_config_from_dict(raw, str(path))


def dump_feature_config(fc: FeatureConfig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(fc.model_dump(), sort_keys=False))
    return path


def pin_to_bundle(fc: FeatureConfig, manifest: dict) -> FeatureConfig:
    """A copy with `bundle_version: any` replaced by the bundle's version and `item_dim` by its width."""
    raw = fc.model_dump()
    raw["bundle_version"] = manifest["version"] if fc.bundle_version == ANY_VERSION else fc.bundle_version
    for f in raw["features"]:
        if f["dimension"] == ITEM_DIM:
            f["dimension"] = int(manifest["item_dim"])
    return feature_config_from_dict(raw, "<pinned>")


def dimension_of(spec: FeatureSpec, item_dim: int) -> int:
    return item_dim if spec.dimension == ITEM_DIM else int(spec.dimension)


@dataclass
class ValidationReport:
    bundle_version: str
    item_dim: int
    checked: list[str] = field(default_factory=list)  # one line per feature that passed
    pinned: bool = True


def _registered_views(store_cfg) -> dict:
    """Feature views as registered in the Feast repo (not as the code would define them)."""
    from feature_gen.store.feature_store import open_store

    store = open_store(store_cfg, apply=False)
    try:
        views = store.feast.list_feature_views()
    except Exception as exc:  # a repo never applied has no registry file
        raise FeatureConfigError(f"{store.repo_path}: no readable Feast registry ({type(exc).__name__}: {exc}); "
                                 "create it first (`hllm feature-repo`, any job with --materialize, `hllm materialize`)") from None
    if not views:
        raise FeatureConfigError(f"{store.repo_path}: no feature views registered; apply the repo first "
                                 "(`hllm feature-repo`)")
    return {v.name: v for v in views}


def _check_view_ref(where: str, view_name: str, field_name: str, views: dict, problems: list[str]):
    view = views.get(view_name)
    if view is None:
        problems.append(f"{where}: view {view_name!r} is not in the feature store (have: {', '.join(sorted(views))})")
        return None
    fields = {f.name: f for f in view.features}
    if field_name not in fields:
        problems.append(f"{where}: view {view_name!r} has no field {field_name!r} (have: {', '.join(sorted(fields))})")
        return None
    return view, fields[field_name]


def validate_feature_config(fc: FeatureConfig, store_cfg, bundle_dir: str | Path) -> ValidationReport:
    """Check `fc` against the registered feature views and the bundle; raise FeatureConfigError listing
    every problem (one line each), else return what was checked."""
    from feature_gen.model.bundle import BundleError, verify_bundle

    try:
        manifest = verify_bundle(bundle_dir)
    except BundleError as exc:
        raise FeatureConfigError(f"bundle: {exc}") from None
    item_dim = int(manifest["item_dim"])
    problems: list[str] = []
    if fc.bundle_version != ANY_VERSION and fc.bundle_version != manifest["version"]:
        problems.append(f"bundle_version: the config is pinned to {fc.bundle_version} but the bundle at "
                        f"{bundle_dir} is {manifest['version']}")
    views = _registered_views(store_cfg)
    report = ValidationReport(manifest["version"], item_dim, pinned=fc.bundle_version != ANY_VERSION)
    for i, spec in enumerate(fc.features):
        where = f"features[{i}] ({spec.name})"
        n_before = len(problems)
        dim = dimension_of(spec, item_dim)
        if spec.source == "view":
            found = _check_view_ref(where, spec.view, spec.field, views, problems)
            if found:
                view, fld = found
                entities = list(getattr(view, "entities", []))
                if spec.entity not in entities:
                    problems.append(f"{where}.entity: view {spec.view!r} is keyed by {', '.join(entities)}, not {spec.entity!r}")
                feast_type = str(fld.dtype)
                dtype, is_vector = _FEAST_TYPES.get(feast_type, (feast_type, None))
                if dtype != spec.dtype:
                    problems.append(f"{where}.dtype: {spec.view}.{spec.field} is {feast_type} in the store; config says {spec.dtype}")
                if is_vector is not None and is_vector != spec.is_vector:
                    problems.append(f"{where}.dimension: {spec.view}.{spec.field} is {'a vector' if is_vector else 'a scalar'} "
                                    f"in the store; config says dimension {spec.dimension}")
                if is_vector and spec.field == "embedding" and dim != item_dim:
                    problems.append(f"{where}.dimension: {dim}, but bundle {manifest['version']} embeddings have {item_dim}")
        else:
            for ref in spec.inputs:
                if ":" in ref:
                    view_name, _, field_name = ref.partition(":")
                    _check_view_ref(f"{where}.inputs", view_name, field_name, views, problems)
            if spec.function == "cosine":
                dims = {dimension_of(fc.feature(r), item_dim) for r in spec.inputs if ":" not in r}
                if len(dims) > 1:
                    problems.append(f"{where}.inputs: cosine needs inputs of one width; got {sorted(dims)}")
            if spec.function == "late_fusion":
                head = manifest.get("fusion_head") or {}
                if head.get("fusion") != "late":
                    problems.append(f"{where}.function: late_fusion needs a bundle with a late-fusion click head "
                                    f"(loss.objective discriminative, loss.fusion late); {manifest['version']} has "
                                    f"{head.get('fusion', 'none')}")
                dims = {dimension_of(fc.feature(r), item_dim) for r in spec.inputs if ":" not in r}
                if dims - {item_dim}:
                    problems.append(f"{where}.inputs: the late-fusion head reads two item_dim ({item_dim}) vectors; "
                                    f"got widths {sorted(dims)}")
            if dim != 1:
                problems.append(f"{where}.dimension: {spec.function} yields a scalar; config says {dim}")
        if isinstance(spec.default, list) and len(spec.default) != dim:
            problems.append(f"{where}.default: {len(spec.default)} values for dimension {dim}")
        if len(problems) == n_before:
            origin = f"{spec.view}.{spec.field}" if spec.source == "view" else f"{spec.function}({', '.join(spec.inputs)})"
            report.checked.append(f"{spec.name:20s} {origin:42s} {spec.dtype}[{dim}] default {spec.default} "
                                  f"max_staleness {spec.max_staleness or 'none'}")
    if problems:
        raise FeatureConfigError("\n".join(problems))
    return report


@dataclass
class RowCount:
    view: str
    offline: int  # rows of the version in the offline store
    probed: int  # offline ids looked up online (all of them up to the probe limit, else a random sample)
    online: int  # of those, found online with this bundle version


def count_version_rows(store_cfg, version: str, probe_limit: int = 100_000, seed: int = 0) -> list[RowCount]:
    """Rows of bundle `version` per embedding view: offline (the version's Parquet), and online (the
    offline ids looked up in the online store, counted where the row there carries this version)."""
    import numpy as np

    from feature_gen.store.feature_store import open_store
    from feature_gen.store.offline_store import OfflineStoreError, read_version

    store = open_store(store_cfg, apply=False)
    counts = []
    for view, key, lookup in (("item_embedding", "item_id", store.item_embeddings), ("user_embedding", "user_id", store.user_embeddings)):
        try:
            ids = read_version(store_cfg.offline_root, view, version, columns=[key])[key].astype(str).to_numpy()
        except OfflineStoreError:
            ids = np.array([], dtype=object)
        probe = ids if len(ids) <= probe_limit else np.random.default_rng(seed).choice(ids, probe_limit, replace=False)
        online = 0
        for start in range(0, len(probe), 5000):
            got = lookup(probe[start : start + 5000].tolist())
            online += int(sum(bool(f) and v == version for f, v in zip(got.found, got.bundle_versions)))
        counts.append(RowCount(view, len(ids), len(probe), online))
    return counts


def row_problems(counts: list[RowCount], version: str, min_coverage: float,
                 catalogue_size: int | None = None, active_users: int | None = None) -> list[str]:
    """One line per view whose rows of `version` are missing or below `min_coverage`, naming the count."""
    expected = {"item_embedding": (catalogue_size, "the catalogue"), "user_embedding": (active_users, "the active users")}
    problems = []
    for c in counts:
        size, what = expected[c.view]
        if c.offline == 0:
            problems.append(f"{c.view}: 0 rows of bundle {version} offline; run the Spark job for this bundle")
            continue
        if size and c.offline < min_coverage * size:
            problems.append(f"{c.view}: {c.offline} rows of bundle {version} offline, {c.offline / size:.1%} of {what} "
                            f"({size}); expected at least {min_coverage:.0%}")
        if c.online == 0:
            problems.append(f"{c.view}: 0 of {c.probed} rows of bundle {version} online; materialize the version "
                            "(`hllm materialize --bundle ...` or the job's --materialize)")
        elif c.online < min_coverage * c.probed:
            problems.append(f"{c.view}: {c.online} of {c.probed} probed rows of bundle {version} online "
                            f"({c.online / c.probed:.1%}); expected at least {min_coverage:.0%}")
    return problems


def run_validate_features(features_path: str | None, bundle_dir: str, store_cfg, min_coverage: float = 0.99,
                          catalogue_size: int | None = None, active_users: int | None = None) -> int:
    """`hllm validate-features`: exit 0 and print what was checked, or 2 and one line per problem. Checks
    the config against the registered views and the bundle, then the bundle version's rows: offline and
    online, each at least `min_coverage` (of --catalogue-size / --active-users offline, of the offline
    rows online)."""
    import sys

    features_path = features_path or str(SHIPPED_CONFIG)
    try:
        fc = load_feature_config(features_path)
        report = validate_feature_config(fc, store_cfg, bundle_dir)
        counts = count_version_rows(store_cfg, report.bundle_version)
        problems = row_problems(counts, report.bundle_version, min_coverage, catalogue_size, active_users)
        if problems:
            raise FeatureConfigError("\n".join(problems))
    except FeatureConfigError as exc:
        for line in str(exc).splitlines():
            print(f"hllm validate-features: {line}", file=sys.stderr)
        return 2
    for line in report.checked:
        print(line)
    for c in counts:
        print(f"{c.view:20s} {c.offline} rows of {report.bundle_version} offline; {c.online} of {c.probed} probed online")
    pin = "pinned" if report.pinned else "not pinned (bundle_version: any)"
    print(f"ok: {features_path}: {len(report.checked)} features match the feature store and bundle "
          f"{report.bundle_version} (item_dim {report.item_dim}); version {pin}; rows at least {min_coverage:.0%} covered")
    return 0

"""Install size per role (pyproject extras), measured in the project's virtualenv.

    python -m benchmarks.install_size            # table of roles: distributions, MB on disk

Method: a role's requirements are pyproject's `dependencies` plus its extra; their closure is resolved
through the installed distributions' own metadata (`Requires-Dist`, markers evaluated for this
interpreter and the extras asked for), i.e. exactly the versions of requirements.lock and the CPU build
of torch; a role's size is the sum of the files each distribution of the closure installed (its RECORD,
stat'ed on disk). No network, no second virtualenv. pip itself and the data-carrier packages are left
out; CUDA builds of torch are larger (GPU users bring their own).
"""

from __future__ import annotations

import importlib.metadata as md
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
SELF = "hllm-features"
ROLES = ("base", "stream", "spark", "train", "ranker", "dev")


def _project() -> dict:
    return tomllib.loads(PYPROJECT.read_text())["project"]


def role_requirements(role: str) -> list[Requirement]:
    """pyproject's requirements of `role` ("base" = no extra), self-references expanded."""
    project = _project()
    extras = project.get("optional-dependencies", {})
    pending = [Requirement(r) for r in project["dependencies"]]
    if role != "base":
        pending += [Requirement(r) for r in extras[role]]
    out: list[Requirement] = []
    while pending:
        req = pending.pop()
        if canonicalize_name(req.name) == SELF:  # hllm-features[train,...]
            pending += [Requirement(r) for extra in req.extras for r in extras[extra]]
        elif req.marker is None or req.marker.evaluate({"extra": ""}):
            out.append(req)
    return out


def closure(requirements: list[Requirement]) -> dict[str, md.Distribution]:
    """Installed distributions the requirements pull in, by canonical name (missing ones raise)."""
    found: dict[str, md.Distribution] = {}
    pending = [(r, tuple(sorted(r.extras))) for r in requirements]
    seen: set[tuple[str, tuple]] = set()
    while pending:
        req, extras = pending.pop()
        name = canonicalize_name(req.name)
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        try:
            dist = found.get(name) or md.distribution(req.name)
        except md.PackageNotFoundError:
            raise LookupError(f"{req.name} (required for this role) is not installed in {sys.prefix}") from None
        found[name] = dist
        for text in dist.requires or []:
            sub = Requirement(text)
            envs = [{"extra": e} for e in extras] or [{"extra": ""}]
            if sub.marker is None or any(sub.marker.evaluate(env) for env in envs):
                pending.append((sub, tuple(sorted(sub.extras))))
    return found


def installed_bytes(dist: md.Distribution) -> int:
    total = 0
    for f in dist.files or []:
        path = Path(str(dist.locate_file(f)))
        if path.is_file():
            total += path.stat().st_size
    return total


def role_report(role: str) -> dict:
    dists = closure(role_requirements(role))
    sizes = {name: installed_bytes(d) for name, d in dists.items()}
    return {"role": role, "distributions": len(dists), "bytes": sum(sizes.values()),
            "largest": sorted(sizes.items(), key=lambda kv: -kv[1])[:4]}


def main() -> int:
    print(f"{'role':8} {'dists':>5} {'MB':>7}  largest")
    for role in ROLES:
        r = role_report(role)
        largest = ", ".join(f"{n} {b / 1e6:.0f}" for n, b in r["largest"])
        print(f"{role:8} {r['distributions']:5d} {r['bytes'] / 1e6:7.0f}  {largest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

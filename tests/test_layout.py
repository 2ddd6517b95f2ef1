"""The layout is a map (docs/architecture.md): what each floor may import, no import circle, and in-cluster
code that imports only what its container has.

Imports are read from the source (every ``import`` statement, also inside functions and under
``TYPE_CHECKING``), so a lazy import cannot hide a circle or a climb to a higher floor.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("aiinfn", "components", "policies", "tools", "services")


@dataclass(frozen=True)
class Module:
    name: str
    path: Path
    is_package: bool


def program_modules() -> dict[str, Module]:
    out = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            name = ".".join(parts[:-1] if is_package else parts)
            out[name] = Module(name, path, is_package)
    return out


MODULES = program_modules()


def imported_names(mod: Module) -> list[tuple[str, int]]:
    """(absolute dotted name, line) of everything the module imports, ``from P import x`` as ``P.x``."""
    tree = ast.parse(mod.path.read_text(encoding="utf-8"))
    package = mod.name if mod.is_package else mod.name.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            out.append((target, node.lineno))
            out += [(f"{target}.{a.name}", node.lineno) for a in node.names if a.name != "*"]
    return out


def program_target(name: str) -> str | None:
    """The deepest program module a dotted name falls in (``aiinfn.config.model.SiteConfig`` -> ``aiinfn.config.model``)."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def edges() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for m, mod in MODULES.items():
        for name, _ in imported_names(mod):
            target = program_target(name)
            if target is not None and target != m:
                graph[m].add(target)
    return graph


GRAPH = edges()


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_walker_sees_lazy_and_type_checking_imports(tmp_path: Path):
    """The walker is the oracle of the other tests: it must see what Python would import at any time."""
    src = ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from aiinfn.config.model import SiteConfig\n"
           "def f():\n    from ..derive import mig\n    import components.kube\n")
    probe = tmp_path / "_walker_probe.py"  # read as if it were aiinfn/validate/_walker_probe.py
    probe.write_text(src, encoding="utf-8")
    names = {n for n, _ in imported_names(Module("aiinfn.validate._walker_probe", probe, False))}
    assert {"aiinfn.config.model.SiteConfig", "aiinfn.derive.mig", "components.kube"} <= names
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_circle_among_the_programs_modules():
    assert MODULES and sum(map(len, GRAPH.values())) > 300  # the whole program is walked
    assert circles(GRAPH) == []


# Floor by floor, what a module may import of the program (prefixes). The site model at the bottom imports
# nothing above it; components build on it; the policy pack sits beside them; the tools on top may import
# anything; in-cluster code imports only its own folder (and, in the runtime image, the site model).
SITE_BASE = ("aiinfn.catalogue", "aiinfn.naming")
FLOORS: list[tuple[str, tuple[str, ...]]] = [
    ("aiinfn.catalogue", ()),
    ("aiinfn.naming", ()),
    ("aiinfn.config", (*SITE_BASE, "aiinfn.config")),
    ("aiinfn.derive", (*SITE_BASE, "aiinfn.config", "aiinfn.derive")),
    ("aiinfn.validate", (*SITE_BASE, "aiinfn.config", "aiinfn.derive", "aiinfn.validate")),
    ("aiinfn.load", ("aiinfn.config", "aiinfn.validate")),
    ("aiinfn", ()),
    ("components", ("aiinfn", "components")),
    ("policies", ("aiinfn", "policies")),
    ("tools", PACKAGES),
    ("services.exporters", ("services.exporters", *SITE_BASE)),
    ("services.accounting", ("services.accounting", "aiinfn.derive.shares")),
    ("services", ()),  # each folder: itself only (below)
]


def allowed_for(module: str) -> tuple[str, ...]:
    for prefix, allowed in FLOORS:
        if module == prefix or module.startswith(prefix + "."):
            if prefix == "services":
                return (".".join(module.split(".")[:2]),)
            return allowed
    raise AssertionError(f"{module} is on no floor: add it to FLOORS and docs/architecture.md")


def permitted(module: str, target: str) -> bool:
    # importing aiinfn.catalogue runs aiinfn/__init__.py too: a package above an allowed module is allowed
    return any(target == a or target.startswith(a + ".") or a.startswith(target + ".") for a in allowed_for(module))


def test_each_floor_imports_only_what_lies_below_it():
    wrong = [f"{m} imports {t}" for m, targets in GRAPH.items() for t in sorted(targets) if not permitted(m, t)]
    assert wrong == []


def test_floor_rules_catch_a_climb():
    """Each climb the layout forbids is refused by the rules above."""
    for module, target in (("aiinfn.config.batch", "aiinfn.derive.queues"), ("aiinfn.derive.mig", "aiinfn.validate"),
                           ("aiinfn.naming", "aiinfn.config.model"), ("aiinfn.derive.batchjobs", "services.jobs.jobspec"),
                           ("aiinfn.load", "components.stackconfig"), ("components.jobs", "services.jobs"),
                           ("policies.rules.gpus", "components.batch"), ("services.jobs.app", "aiinfn.naming"),
                           ("services.hub.aiinfn_hub", "services.jobs.app"), ("aiinfn.config.model", "tools.cli")):
        assert not permitted(module, target), (module, target)
    assert permitted("aiinfn.config.model", "aiinfn") and permitted("tools.cli", "components.site")


def third_party(mod: Module) -> set[str]:
    tops = set()
    for name, _ in imported_names(mod):
        top = name.split(".")[0]
        if top and top not in sys.stdlib_module_names and top not in PACKAGES:
            tops.add(top)
    return tops


def test_the_site_model_is_pure_python():
    """aiinfn/ imports no Pulumi (nor any other package): the tools, the policy pack and the runtime image load it."""
    found = {m: third_party(mod) for m, mod in MODULES.items() if m == "aiinfn" or m.startswith("aiinfn.")}
    assert {m: t for m, t in found.items() if t} == {}


def test_no_symlink_in_the_repository():
    """One home per module shipped into the cluster: nothing is linked into another folder."""
    listing = subprocess.run(["git", "ls-files", "-s"], cwd=ROOT, capture_output=True, text=True, check=False)
    if listing.returncode:
        pytest.skip("not a git checkout")
    links = [line.split("\t", 1)[1] for line in listing.stdout.splitlines() if line.startswith("120000 ")]
    assert links == []
    assert [p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*") if p.is_symlink()] == []


def containers() -> list[tuple[Path, dict]]:
    out = []
    for spec in sorted((ROOT / "services").glob("*/container.toml")):
        for c in tomllib.loads(spec.read_text(encoding="utf-8")).get("container", []):
            out.append((spec.parent, c))
    return out


def test_every_in_cluster_module_belongs_to_one_container():
    listed = [folder / f for folder, c in containers() for f in c["files"]]
    assert len(listed) == len(set(listed))
    for folder in sorted(p for p in (ROOT / "services").iterdir() if p.is_dir() and p.name != "__pycache__"):
        assert (folder / "container.toml").is_file(), f"{folder.name}: say what runs it in container.toml"
        for path in sorted(folder.glob("*.py")):
            if path.name == "__init__.py" and path not in listed:
                continue  # the repository's package marker, not shipped
            assert path in listed, f"services/{folder.name}/{path.name} is in no container of its container.toml"


def test_each_in_cluster_module_imports_only_what_its_container_has():
    """Standard library, the container's packages (container.toml, from the image's own requirement list) and
    the modules shipped with it; nothing of the program's other floors."""
    wrong = []
    for folder, c in containers():
        own = {Path(f).stem for f in c["files"]} | {Path(f).stem for f in c.get("shipped_with", [])}
        allowed_top = set(c["imports"])
        for fname in c["files"]:
            mod = MODULES[".".join((folder / fname).relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")]
            tree = ast.parse(mod.path.read_text(encoding="utf-8"))
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and node.level:
                    names = [node.module] if node.module else [a.name for a in node.names]
                    for n in names:
                        if n.split(".")[0] not in own:
                            wrong.append(f"{folder.name}/{fname}:{node.lineno} imports .{n}, not shipped with it")
                    continue
                tops = ([a.name for a in node.names] if isinstance(node, ast.Import)
                        else [node.module] if isinstance(node, ast.ImportFrom) else [])
                for n in tops:
                    top = n.split(".")[0]
                    if top not in sys.stdlib_module_names and top not in allowed_top and top not in own:
                        wrong.append(f"{folder.name}/{fname}:{node.lineno} imports {n}, which its container lacks")
    assert wrong == []


def test_the_container_checks_catch_a_stray_import():
    """A module of the hub's container importing PyYAML (not in the hub image) would be reported."""
    hub = next(c for f, c in containers() if f.name == "hub")
    assert "yaml" not in hub["imports"] and "pulumi" not in hub["imports"] and "yaml" not in sys.stdlib_module_names


def test_containers_name_the_images_the_components_run():
    from aiinfn.config.monitoring import DEFAULT_RUNTIME_IMAGE
    from components.jobs import HUB_IMAGE
    from components.offload import CSR_APPROVER_IMAGE
    from components.patching import GRACE_IMAGE

    images = {folder.name: c.get("image") for folder, c in containers() if c.get("image")}
    assert images["hub"] == images["jobs"] == images["s3"] == HUB_IMAGE
    assert images["patching"] == GRACE_IMAGE and images["csrapprover"] == CSR_APPROVER_IMAGE
    assert DEFAULT_RUNTIME_IMAGE.startswith(images["exporters"] + ":") and images["accounting"] == images["exporters"]


def test_the_job_service_ships_its_own_modules_and_the_hubs_one():
    from components.jobs import service_sources

    (jobs,) = [c for f, c in containers() if f.name == "jobs"]
    shipped = service_sources()
    assert sorted(shipped) == sorted([*jobs["files"], *(Path(p).name for p in jobs["shipped_with"])])
    assert shipped["aiinfn_hub.py"] == (ROOT / "services" / "hub" / "aiinfn_hub.py").read_text(encoding="utf-8")

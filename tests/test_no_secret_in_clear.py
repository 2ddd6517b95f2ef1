"""A supplied secret never appears in clear in anything `aiinfn render` writes."""

from __future__ import annotations

from pathlib import Path

import pytest

from aiinfn.load import SECRET_KEYS
from tools.engine.output import write
from tools.engine.run import run_program

from .conftest import STACKS


@pytest.mark.parametrize("stack", STACKS)
def test_supplied_secrets_are_redacted_everywhere(stack: str, tmp_path: Path) -> None:
    markers = {key: f"S3CR3T-{key}-Zq9x" for key in SECRET_KEYS if key != "kubeconfig"}
    rendered = run_program(stack, secret_values=markers)
    write(rendered, tmp_path)
    texts = {p: p.read_text() for p in tmp_path.rglob("*") if p.is_file()}
    assert any(p.name == "summary.md" for p in texts)
    for path, text in texts.items():
        for key, marker in markers.items():
            assert marker not in text, f"{key} in clear in {path.relative_to(tmp_path)}"
            assert "S3CR3T" not in text
    for r in rendered.resources:
        assert "S3CR3T" not in repr(r.inputs), f"{r.type} {r.name}"


def test_two_renders_of_a_stack_are_byte_identical(tmp_path: Path) -> None:
    """Operators diff renders in CI: the same stack must give the same bytes every time."""
    outs = []
    for i in range(2):
        out = tmp_path / f"out{i}"
        write(run_program("cnaf"), out)
        outs.append({p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()})
    assert outs[0].keys() == outs[1].keys()
    differing = [str(p) for p in outs[0] if outs[0][p] != outs[1][p]]
    assert not differing, differing

"""Supply chain: every image and chart pinned."""

from __future__ import annotations

from typing import Any, Iterator

from pulumi_policy import EnforcementLevel, ReportViolation, ResourceValidationArgs, ResourceValidationPolicy

HELM_RELEASE = "kubernetes:helm.sh/v3:Release"


def images_in(value: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """Every ``image`` string in a manifest or values tree, with where it is."""
    if isinstance(value, dict):
        for k, v in value.items():
            sub = f"{path}.{k}" if path else k
            if k == "image" and isinstance(v, str):
                yield sub, v
            else:
                yield from images_in(v, sub)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from images_in(v, f"{path}[{i}]")


def image_is_pinned(image: str) -> bool:
    if "@sha256:" in image:
        return True
    last = image.rsplit("/", 1)[-1]
    if ":" not in last:
        return False
    tag = last.rsplit(":", 1)[1]
    return tag not in ("latest", "") and not tag.startswith("<")


def _images_pinned(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if not args.resource_type.startswith("kubernetes:") or args.resource_type == HELM_RELEASE:
        return
    for where, image in images_in(args.props):
        if not image_is_pinned(image):
            report(f"{args.name}: image {image!r} at {where} is not pinned; use an explicit version tag or a digest")


def _charts_pinned(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if args.resource_type != HELM_RELEASE:
        return
    version = str(args.props.get("version") or "")
    if not version or any(c in version for c in "^~*x><= ") or version == "latest":
        report(f"Helm release '{args.name}' has chart version {version!r}; pin an exact chart version")


images_pinned = ResourceValidationPolicy(
    name="images-pinned",
    description="Every container image in a Kubernetes object is pinned to a version tag (not latest) or a digest.",
    enforcement_level=EnforcementLevel.MANDATORY,
    validate=_images_pinned,
)
charts_pinned = ResourceValidationPolicy(
    name="charts-pinned",
    description="Every Helm release names an exact chart version.",
    enforcement_level=EnforcementLevel.MANDATORY,
    validate=_charts_pinned,
)

POLICIES = [images_pinned, charts_pinned]

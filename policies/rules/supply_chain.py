"""Supply chain: every image and chart pinned."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pulumi_policy import EnforcementLevel, ReportViolation, ResourceValidationArgs, ResourceValidationPolicy

from .common import HELM_RELEASE, fix, values_of


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
    return tag not in MOVING_TAGS and not tag.startswith("<") and not tag.endswith(("-nightly", "-latest"))


# Tags that name a branch or a build channel, not a release: they move (e.g. juicefs-csi-driver v0.32.1
# pkg/config/config.go:93 falls back to "juicedata/mount:ce-nightly").
MOVING_TAGS = {"", "latest", "nightly", "ce-nightly", "ee-nightly", "edge", "main", "master", "dev", "stable"}


def _images_pinned(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if not args.resource_type.startswith("kubernetes:") or args.resource_type == HELM_RELEASE:
        return
    for where, image in images_in(args.props):
        if not image_is_pinned(image):
            report(fix(f"image {image!r} at {where} is not pinned", "use an explicit version tag (not latest) or a digest"))


def _charts_pinned(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if args.resource_type != HELM_RELEASE:
        return
    version = str(args.props.get("version") or "")
    if not version or any(c in version for c in "^~*x><= ") or version == "latest":
        report(fix(f"Helm release '{args.name}' has chart version {version!r}",
                   "pin an exact chart version (e.g. version='4.4.0')"))


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



def _tag_pinned(tag: object) -> bool:
    t = str(tag if tag is not None else "").strip()
    return bool(t) and t != "latest" and not t.startswith("<") and "*" not in t


def helm_images(values: object, path: str = "") -> Iterator[tuple[str, str, bool]]:
    """(where, image, pinned) for every image a chart's values name explicitly.

    Charts take an image as a string ("repo:tag"), as {repository|name, tag, digest} (a missing tag means the
    chart's own appVersion, which the pinned chart version fixes), or in KubeSpawner overrides (``image``).
    """
    if isinstance(values, dict):
        for k, v in values.items():
            sub = f"{path}.{k}" if path else k
            if k in ("image", "images") and isinstance(v, str):
                yield sub, v, image_is_pinned(v)
            elif k == "defaultMountImage" and isinstance(v, dict):  # juicefs-csi-driver 0.32.1 values.yaml:425
                for kind, img in v.items():
                    if isinstance(img, str) and img:
                        yield f"{sub}.{kind}", img, image_is_pinned(img)
            elif k == "image" and isinstance(v, dict) and ("repository" in v or "name" in v):
                repo = str(v.get("repository") or v.get("name") or "")
                if v.get("digest") or "@sha256:" in repo:
                    yield sub, repo, True
                elif "tag" in v:
                    yield sub, f"{repo}:{v.get('tag')}", _tag_pinned(v.get("tag"))
                elif ":" in repo.rsplit("/", 1)[-1]:
                    yield sub, repo, image_is_pinned(repo)
                yield from helm_images({kk: vv for kk, vv in v.items() if isinstance(vv, (dict, list))}, sub)
            else:
                yield from helm_images(v, sub)
    elif isinstance(values, list):
        for i, v in enumerate(values):
            yield from helm_images(v, f"{path}[{i}]")


def _helm_images_pinned(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if args.resource_type != HELM_RELEASE:
        return
    for where, image, pinned in helm_images(values_of(args.props)):
        if not pinned:
            report(fix(f"Helm release '{args.name}' value {where} names image {image!r} without a fixed version",
                       "set an explicit tag (not latest) or a digest"))


def _chart_repos_trusted(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if args.resource_type != HELM_RELEASE:
        return
    repo = str((args.props.get("repositoryOpts") or {}).get("repo") or "")
    chart = str(args.props.get("chart") or "")
    if repo:
        if not repo.startswith(("https://", "oci://")):
            report(fix(f"Helm release '{args.name}' fetches its chart from {repo!r}, which is not https or oci",
                       "use the chart's https:// or oci:// repository"))
    elif chart.startswith("http://"):
        report(fix(f"Helm release '{args.name}' fetches its chart over plain http ({chart!r})",
                   "use the chart's https:// or oci:// address"))
    elif not chart.startswith(("https://", "oci://", "./", "../", "/")):
        report(fix(f"Helm release '{args.name}' names chart {chart!r} with no repository",
                   "set repository_opts.repo to the chart's https:// (or oci://) repository"))


helm_images_pinned = ResourceValidationPolicy(
    name="helm-images-pinned",
    description="Every image named in Helm values (string or repository/tag map, profile overrides) has a "
    "version tag other than latest, or a digest.",
    enforcement_level=EnforcementLevel.MANDATORY,
    validate=_helm_images_pinned,
)
chart_repos_trusted = ResourceValidationPolicy(
    name="chart-repos-https",
    description="Every Helm chart comes from an https:// or oci:// repository named in the release.",
    enforcement_level=EnforcementLevel.MANDATORY,
    validate=_chart_repos_trusted,
)

POLICIES = [images_pinned, charts_pinned, helm_images_pinned, chart_repos_trusted]

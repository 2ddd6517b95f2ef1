"""The `aiinfn` command: render, check, diff, clone, gpus, report.

Exit codes: 0 success; 1 policy violations or a failed check; 2 an invalid stack file (one line per
mistake) or a bad path or option (one line).
"""

from __future__ import annotations

import argparse
import gc
import importlib
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aiinfn.config.errors import ConfigError

# name -> module holding add_arguments(parser) and run(args) -> int
SUBCOMMANDS = {
    "render": ("tools.cli", "Render a stack offline: manifests, Helm values, OpenStack resources, summary."),
    "check": ("tools.cli", "Validate a stack's config and run the policy rules over its rendered resources."),
    "diff": ("tools.diff", "Compare two renders or two stacks: what a pulumi up would add, update, REPLACE or delete."),
    "clone": ("tools.clone", "Write a hackathon stack cloned from a site, sized for its participants."),
    "gpus": ("tools.gpus", "List this machine's NVIDIA GPUs (pynvml) and print the node-pool snippet."),
    "report": ("tools.report", "Print the accounting answers for a period."),
}


def _find_config_error(err: BaseException) -> ConfigError | None:
    from aiinfn.config.errors import ConfigError

    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, ConfigError):
            return err
        err = err.__cause__ or err.__context__
    return None


def _charts_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--charts", type=Path, metavar="DIR",
                   help="a local chart cache (what `helm pull` writes): expand each Helm release with the Helm engine")


def _render_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("stack", help="a stack name in stacks/ or a path to a stack file")
    p.add_argument("--out", required=True, help="output directory (empty, new, or an earlier render)")
    p.add_argument("--force", action="store_true",
                   help="write into a non-empty directory that holds no earlier render (nothing else in it is removed)")
    _charts_arg(p)


def _check_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("stack", nargs="?", help="a stack name in stacks/ or a path to a stack file")
    p.add_argument("--list-rules", action="store_true",
                   help="print every rule: name, enforcement level, description (with a stack: and its result there)")
    _charts_arg(p)


def _bad_charts_dir(charts: Path | None) -> bool:
    if charts is None:
        return False
    if not charts.is_dir():
        print(f"error: --charts: {charts} is not a directory (a chart cache as `helm pull` writes it)", file=sys.stderr)
        return True
    try:
        import helm_python  # noqa: F401
    except ImportError:
        print("error: --charts needs the Helm engine: pip install 'helm-python-sdk>=0.2.2,<0.3' (extra [charts])",
              file=sys.stderr)
        return True
    return False


def _expand_charts(rendered, charts: Path | None) -> None:
    """With --charts: the objects each cached chart makes, recorded beside ours (rendered.chart_objects)."""
    if charts is None:
        return
    from .engine.charts import expand

    expansion = expand(rendered.resources, charts)
    rendered.chart_objects = expansion.objects
    for line in expansion.missing:
        print(f"not expanded: {line}", file=sys.stderr)


def expiry_warning(cfg) -> str | None:
    """The line an expired hackathon stack gets on stderr (and, as a banner, in its summary)."""
    import datetime as dt

    expires = cfg.site.expiry_date
    if expires is not None and expires < dt.date.today():
        return (f"warning: site {cfg.site.name} EXPIRED on {expires.isoformat()}: destroy it "
                f"(pulumi destroy --stack {cfg.site.name}) instead of deploying it again")
    return None


def run_render(args: argparse.Namespace) -> int:
    from .engine.outdir import check_target
    from .engine.output import write
    from .engine.run import run_program

    out = check_target(args.out, args.force)  # before rendering: a refused --out costs nothing
    if _bad_charts_dir(args.charts):
        return 2
    rendered = run_program(args.stack)
    _expand_charts(rendered, args.charts)
    warning = expiry_warning(rendered.cfg)
    if warning:
        print(warning, file=sys.stderr)
    counts = write(rendered, out, force=args.force)
    print(f"rendered {rendered.stack}: {counts['manifests']} Kubernetes objects, {counts['helm_releases']} Helm releases, "
          f"{counts['openstack']} OpenStack resources, {counts['other']} other resources"
          + (f", {counts['chart_objects']} objects of expanded charts" if counts.get("chart_objects") else "")
          + f" -> {out}")
    return 0


def run_check(args: argparse.Namespace) -> int:
    from .checks import level_name

    if args.list_rules:
        from policies.rules import ALL_POLICIES

        counts: dict[str, int] | None = None
        if args.stack:  # the rules and how this stack fares against each (a stack is never ignored)
            from .checks import run_policies
            from .engine.run import run_program

            counts = {p.name: 0 for p in ALL_POLICIES}
            rendered = run_program(args.stack)
            for v in run_policies(rendered):
                counts[v.rule] = counts.get(v.rule, 0) + 1
        for policy in ALL_POLICIES:
            line = f"{policy.name}\t{level_name(policy)}\t{policy.description}"
            if counts is not None:
                n = counts[policy.name]
                line += f"\t{rendered.stack}: " + ("pass" if n == 0 else f"{n} violation{'s' if n > 1 else ''}")
            print(line)
        return 0
    if not args.stack:
        print("error: stack: give a stack name or path (or --list-rules)", file=sys.stderr)
        return 2
    from .checks import run_policies
    from .engine.run import run_program

    if _bad_charts_dir(args.charts):
        return 2
    rendered = run_program(args.stack)
    _expand_charts(rendered, args.charts)
    violations = run_policies(rendered)
    for v in violations:
        print(v.line())
    blocking = [v for v in violations if v.level == "mandatory"]
    print(f"{rendered.stack}: {len(rendered.resources) + len(rendered.chart_objects)} resources checked, {len(blocking)} mandatory and "
          f"{len(violations) - len(blocking)} advisory violations", file=sys.stderr)
    return 1 if blocking else 0


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """All subcommands are listed; only ``only`` (the one being run) imports its module for its options."""
    from aiinfn import __version__

    parser = argparse.ArgumentParser(prog="aiinfn", description="AI_INFN platform as code")
    parser.add_argument("--version", action="version", version=f"aiinfn {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if module == __name__:
            {"render": _render_args, "check": _check_args}[name](p)
            p.set_defaults(handler={"render": run_render, "check": run_check}[name])
        else:
            p.set_defaults(module=module)
            if only in (None, name):
                importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    # The project runs from its source tree (editable install), so nothing compiled its modules at
    # install time; where PYTHONDONTWRITEBYTECODE is set (this sandbox sets it) every run compiled
    # aiinfn, components and policies from source again (~0.15 s CPU of `render cnaf`). Bytecode caches
    # change nothing in behaviour (Python re-validates them against the source's mtime and size).
    dont_write_bytecode, sys.dont_write_bytecode = sys.dont_write_bytecode, False
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    argv = sys.argv[1:] if argv is None else argv
    chosen = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(chosen if chosen in SUBCOMMANDS else None).parse_args(argv)
    # A render allocates millions of short-lived objects (the SDK's generated types, futures, wire
    # values) and frees nearly all of them by reference counting; the cyclic collector's passes over
    # the growing heap were a sixth of `render cnaf` (4.66 -> 3.74 s) for +4 MB peak. Off for the
    # command only: main() is also called in-process (tests), so the previous state comes back.
    gc_was_enabled = gc.isenabled()
    if args.command in ("render", "check", "diff"):
        gc.disable()
    try:
        handler = getattr(args, "handler", None)
        if handler is None:
            handler = importlib.import_module(args.module).run
        return handler(args)
    except Exception as err:
        from .engine.outdir import OutDirError

        if isinstance(err, OutDirError):
            print(f"error: {err}", file=sys.stderr)
            return 2
        cfg_err = _find_config_error(err)
        if cfg_err is None:
            raise
        for line in cfg_err.lines():
            print(f"error: {line}", file=sys.stderr)
        return 2
    finally:
        if gc_was_enabled:
            gc.enable()
        sys.dont_write_bytecode = dont_write_bytecode


if __name__ == "__main__":
    sys.exit(main())

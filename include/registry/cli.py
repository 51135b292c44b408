"""``python -m include.registry``: the registry command line."""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict
from typing import Any

from include.config import Settings
from include.errors import RegistryError
from include.registry.core import ModelRegistry
from include.registry.schema import PRODUCTION


# -- command line ---------------------------------------------------------------------------------
def _print(obj: Any) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True, default=str))


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for k, v in data.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: data}


def main(argv: list[str] | None = None) -> int:
    """``python -m include.registry``: inspect and operate the registry of this deployment."""
    parser = argparse.ArgumentParser(prog="python -m include.registry", description=main.__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("models", help="registered models with their production version")
    sub.add_parser("list", help="versions with aliases and key metrics").add_argument(
        "--model", help="only this registered model")
    sub.add_parser("show", help="one version: model, files, lineage, aliases").add_argument("version")
    diff = sub.add_parser("diff", help="lineage and metric differences between two versions")
    diff.add_argument("a")
    diff.add_argument("b")
    promote = sub.add_parser("promote", help="make a version its model's production (verifies it first)")
    promote.add_argument("version")
    promote.add_argument("--reason", required=True)
    rollback = sub.add_parser("rollback", help="roll a model's production back (verifies the target first)")
    rollback.add_argument("version", nargs="?", help="default: the previous production version not rolled away from")
    rollback.add_argument("--model", required=True, help="registered model name")
    rollback.add_argument("--reason", required=True)
    history = sub.add_parser("history", help="the ledger of an alias")
    history.add_argument("alias", nargs="?", default=PRODUCTION)
    history.add_argument("--model", help="only this registered model")
    verify = sub.add_parser("verify", help="check artifact hashes")
    verify.add_argument("version", nargs="*")
    verify.add_argument("--model", help="every version of this registered model")
    clean = sub.add_parser("cleanup", help="apply retention (per registered model)")
    clean.add_argument("--model", help="only this registered model")
    clean.add_argument("--keep", type=int, default=None,
                       help="versions kept besides every former production (default: MODEL_REGISTRY_KEEP_LAST, "
                            "the weekly run's retention)")
    clean.add_argument("--dry-run", action="store_true")
    args = parser.parse_args(argv)

    settings = Settings.from_env()
    registry = ModelRegistry.from_settings(settings)
    actor = f"cli:{os.environ.get('USER', 'unknown')}"
    try:
        if getattr(args, "model", None):
            registry.model(args.model)  # an unknown name fails here, with the known ones listed
        if args.command == "models":
            _print(registry.models())
        elif args.command == "list":
            aliases = registry.version_aliases()
            rows = []
            for v in registry.versions(args.model):
                info = registry.describe(v)
                metrics = info["lineage"].get("metrics", {}).get("ensemble", {})
                rows.append({"version": v, "model": info["model"], "aliases": aliases.get(v, []),
                             "macro_f1": metrics.get("macro_f1"), "log_loss": metrics.get("log_loss")})
            _print(rows)
        elif args.command == "show":
            _print(registry.describe(args.version))
        elif args.command == "diff":
            a, b = (_flatten(registry.describe(v)) for v in (args.a, args.b))
            _print({k: {"a": a.get(k), "b": b.get(k)} for k in sorted(set(a) | set(b))
                    if a.get(k) != b.get(k) and not k.startswith(("files.", "registered_at"))})
        elif args.command == "promote":
            _print(asdict(registry.promote(args.version, run_id=actor, reason=args.reason)))
        elif args.command == "rollback":
            _print(asdict(registry.rollback(args.model, args.version, run_id=actor, reason=args.reason)))
        elif args.command == "history":
            _print(registry.history(args.alias, model=args.model))
        elif args.command == "verify":
            for v in args.version or registry.versions(args.model):
                registry.verify(v)
                print(f"{v}: ok")
        elif args.command == "cleanup":
            _print({"removed" if not args.dry_run else "would_remove":
                    registry.cleanup(settings.registry_keep_last if args.keep is None else args.keep,
                                     dry_run=args.dry_run, model=args.model)})
    except RegistryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        registry.dispose()
    return 0

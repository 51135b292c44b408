"""Names and paths that come from users: checked before any file is read or written.

A name that becomes one component of a path (an exchange id, a symbol, a registered model's
name, a DAG id) must match :data:`SAFE_NAME`; a path a run parameter names (``universe_file``,
``source_dir``) must lie under one of :func:`input_roots`. A deployment's own settings
(``MARKET_DATA_DIR``, ``MARKET_UNIVERSE_FILE``) are not limited: only what a person types into a
trigger form is.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from include.errors import ConfigError

#: The repository's root: the bundled data and the default registry and run folders are under it.
PROJECT_ROOT = Path(__file__).resolve().parent.parent
#: The bundled market data: the file source's default folder (``MARKET_DATA_DIR``).
BUNDLED_DATA_DIR = PROJECT_ROOT / "data" / "binance"


def env_path(name: str, default: Path) -> Path:
    """The path environment variable ``name`` holds (``~`` expanded, resolved), or ``default``
    when it is unset or empty."""
    value = os.environ.get(name)
    return Path(value).expanduser().resolve() if value else default


def market_data_dir() -> Path:
    """The file source's folder of market-data files: ``MARKET_DATA_DIR``, else the bundled data."""
    return env_path("MARKET_DATA_DIR", BUNDLED_DATA_DIR)


#: What a name that becomes part of a path may look like: an exchange id, a symbol, a registered
#: model's name, a DAG id. Lower or upper ASCII letters, digits, ``_``, ``-`` and ``.``, starting
#: with a letter or digit, no ``..``: never a separator, never a way out of its folder.
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


def check_name(value: Any, what: str) -> str:
    """``value`` if it is a :data:`SAFE_NAME`, for use as one path component.

    Raises:
        ConfigError: names ``what`` and the value otherwise.
    """
    text = str(value)
    if not SAFE_NAME.fullmatch(text) or ".." in text:
        raise ConfigError(f"{what} {text!r} is not a safe name: expected ASCII letters, digits, '_', '-' or '.', "
                          "starting with a letter or digit, without '..' (it becomes part of a file path)")
    return text


def input_roots() -> tuple[Path, ...]:
    """Folders that run parameters may name files under (``universe_file``, ``source_dir``).

    ``MARKET_INPUT_ROOTS`` (paths separated by ``os.pathsep``) when set, else the project's
    ``data/`` folder and ``MARKET_DATA_DIR``.
    """
    raw = os.environ.get("MARKET_INPUT_ROOTS")
    if raw:
        return tuple(Path(p).expanduser().resolve() for p in raw.split(os.pathsep) if p)
    return (PROJECT_ROOT / "data", market_data_dir())


def checked_input_path(value: str, what: str) -> Path:
    """``value`` resolved (symbolic links followed), if it lies under one of :func:`input_roots`.

    Raises:
        ConfigError: the path is outside every root; the message names the roots and the
            setting that widens them.
    """
    path = Path(value).expanduser().resolve()
    roots = input_roots()
    if not any(path == root or path.is_relative_to(root) for root in roots):
        raise ConfigError(f"{what} {value!r} is outside the folders run parameters may read "
                          f"({', '.join(map(str, roots))}); set MARKET_INPUT_ROOTS to allow another")
    return path

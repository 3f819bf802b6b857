"""Command-line flags made from Settings fields: one flag per field, naming its OA_* variable."""

from __future__ import annotations

import argparse
from typing import Any


def add_setting_flag(parser: argparse.ArgumentParser, f: Any) -> None:
    """Add the flag of one Settings field; its default is None so the OA_* variable (or default) applies."""
    meta = f.metadata
    kwargs: dict[str, Any] = {"dest": f.name, "default": None, "help": f"{meta['help']} (env {meta['env']})"}
    if meta.get("many"):
        kwargs["action"] = "append"
    elif isinstance(f.default, bool):
        kwargs["action"] = argparse.BooleanOptionalAction
    else:
        kwargs["type"] = type(f.default)
        if "choices" in meta:
            kwargs["choices"] = meta["choices"]
    parser.add_argument(meta["flag"], **kwargs)

#!/usr/bin/env python3
"""Copy a trained general model into the package slot of the built-in model.

    python scripts/install_builtin_model.py OUT/general [--force]

``OUT/general`` is what ``scripts/train_general_model.py`` exports: ``config.json``,
``model.safetensors`` (bfloat16) and ``PROVENANCE.json``. The model is loaded and checked first
(a next-byte flat model, weights at most 16 MB, a provenance record naming it ``general``);
then the three files are copied into ``src/omnibyte/builtin/general/`` of this checkout, which
the wheel ships as package data. Existing weights are replaced only with ``--force``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from omnibyte.errors import OmnibyteError  # noqa: E402
from omnibyte.fileio import atomic_write_bytes  # noqa: E402
from omnibyte.models.builtin import BUILTIN_NAME, MAX_WEIGHTS_BYTES, PROVENANCE_FILE, read_provenance  # noqa: E402
from omnibyte.models.serialization import CONFIG_FILE, WEIGHTS_FILE, load_model, read_config  # noqa: E402

FILES = (CONFIG_FILE, WEIGHTS_FILE, PROVENANCE_FILE)
SLOT = ROOT / "src" / "omnibyte" / "builtin" / BUILTIN_NAME


def check(source: Path) -> str:
    """Everything the package expects of its built-in model; returns a one-line description."""
    for name in FILES:
        if not (source / name).is_file():
            raise OmnibyteError(f"{source} has no {name} (export it with scripts/train_general_model.py)")
    size = (source / WEIGHTS_FILE).stat().st_size
    if size > MAX_WEIGHTS_BYTES:
        raise OmnibyteError(f"{source / WEIGHTS_FILE} is {size:,} bytes; the package allows {MAX_WEIGHTS_BYTES:,}")
    document = read_config(source)
    if document["task"]["name"] != "next-byte":
        raise OmnibyteError(f"{source} holds a {document['task']['name']} model, not a next-byte model")
    provenance = read_provenance(source)
    if provenance.get("name") != BUILTIN_NAME:
        raise OmnibyteError(f"{source / PROVENANCE_FILE} names the model {provenance.get('name')!r}, "
                            f"not {BUILTIN_NAME!r}")
    model = load_model(source)  # every name and shape checked
    return (f"{model.arch} model, {model.num_parameters():,} parameters, {size:,} bytes, trained "
            f"{provenance.get('date')} on {provenance.get('device')}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="the exported model folder (OUT/general)")
    parser.add_argument("--force", action="store_true", help="replace weights already installed")
    parser.add_argument("--into", type=Path, default=SLOT, help="the slot to fill (default: this checkout's package)")
    args = parser.parse_args(argv)
    try:
        description = check(args.source)
        if (args.into / WEIGHTS_FILE).exists() and not args.force:
            raise OmnibyteError(f"{args.into} already holds weights (use --force to replace them)")
    except OmnibyteError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    args.into.mkdir(parents=True, exist_ok=True)
    for name in (WEIGHTS_FILE, PROVENANCE_FILE, CONFIG_FILE):  # the config last: it marks the slot complete
        atomic_write_bytes(args.into / name, (args.source / name).read_bytes())
    print(f"installed {description} into {args.into}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`fashiondist models`: the model zoo at a glance (names, what they are, size, compute, how they train)."""

from __future__ import annotations

import argparse
from typing import Any

from fashiondist.cli._common import formatter

DESCRIPTION = """\
List every registered model variant: its description, parameter count and multiply-accumulates per
image for K classes, and the recipe it trains with (hyperparameters a config file or flag can override).

examples:
  fashiondist models                    # the 10-class Fashion-MNIST sizes
  fashiondist models --num-classes 5    # the 5-class competition CSV (the notebook's parameter counts)
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "models",
        help="list the model variants with their size, compute and training recipe",
        description=DESCRIPTION,
        formatter_class=formatter(),
    )
    parser.add_argument(
        "--num-classes",
        type=int,
        default=10,
        metavar="K",
        help="number of classes the sizes are computed for (default: 10)",
    )
    parser.set_defaults(func=run_models)


def _recipe_text(recipe: dict[str, Any]) -> str:
    """`{"optimizer": "adam", "lr": 0.001, "batch_size": 128, "epochs": 25}` -> "adam 0.001, batch 128, 25 ep"."""
    parts = [f"{recipe.get('optimizer', '')} {recipe['lr']:g}".strip()] if "lr" in recipe else []
    if "batch_size" in recipe:
        parts.append(f"batch {recipe['batch_size']}")
    if "epochs" in recipe:
        parts.append(f"{recipe['epochs']} ep")
    return ", ".join(parts)


def run_models(args: argparse.Namespace) -> int:
    from rich.table import Table

    from fashiondist.consoles import results_console
    from fashiondist.errors import InputError
    from fashiondist.models import DEFAULT_MODEL, create_model, list_models, model_description, model_recipe
    from fashiondist.models.complexity import count_parameters, macs_per_image

    if args.num_classes < 2:
        raise InputError(f"--num-classes {args.num_classes}: a classifier needs at least 2 classes")
    table = Table(title=f"fashiondist models (K={args.num_classes})")
    table.add_column("name", style="bold")
    table.add_column("params", justify="right")
    table.add_column("MACs/image", justify="right")
    table.add_column("recipe")
    table.add_column("description")
    for name in list_models():
        model = create_model(name, args.num_classes)
        label = f"{name} (default)" if name == DEFAULT_MODEL else name
        macs = f"{macs_per_image(model) / 1e6:.1f}M"
        table.add_row(
            label,
            f"{count_parameters(model):,}",
            macs,
            _recipe_text(model_recipe(name)),
            model_description(name),
        )
    results_console().print(table)
    return 0

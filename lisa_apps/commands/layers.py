"""`lisa layers MODEL`: print a model's layer map (groups, parameter counts, shares, tying).

The map is built on the meta device from the model's config: no weight is loaded, so it is
instant even for a large model.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable


def configure(parser: argparse.ArgumentParser) -> None:
    """Declare the arguments of `lisa layers`."""
    parser.add_argument(
        "model",
        metavar="MODEL",
        help="a built-in model name (smollm2-135m, tiny-llama, ...) or a save_pretrained folder",
    )
    parser.add_argument(
        "--blocks-path",
        default=None,
        help="dotted path of the blocks list in the model, e.g. model.layers "
        "(default: discover it from the architecture)",
    )


def format_layer_map(layer_map) -> str:
    """The map as a table: group, parameter count, share of the total (%); then tying and path."""
    counts = {group: layer_map.numel(group) for group in layer_map.group_names}
    total = sum(counts.values())
    width = max(len("group"), *(len(group) for group in counts))
    lines = [f"{'group':<{width}}  {'parameters':>12}  {'share %':>7}"]
    for group, count in counts.items():
        lines.append(f"{group:<{width}}  {count:>12,}  {100 * count / total:>7.2f}")
    lines.append(f"{'total':<{width}}  {total:>12,}  {100.0:>7.2f}")
    tying = (
        "tied: embed and head share one weight (counted in embed)"
        if layer_map.tied
        else "not tied: embed and head have separate weights"
    )
    lines.append(tying)
    lines.append(
        f"blocks: {layer_map.num_blocks} at {layer_map.blocks_path!r} ({layer_map.discovery})"
    )
    return "\n".join(lines)


def prepare(args: argparse.Namespace) -> Callable[[], int]:
    """Build the layer map from the config (the check and the work are one cheap step)."""
    from lisa.layers import LayerMap
    from lisa_apps.models import meta_model, model_config

    model = meta_model(model_config(args.model))
    try:
        layer_map = LayerMap.from_model(model, blocks_path=args.blocks_path)
    except (AttributeError, KeyError, TypeError) as error:
        raise ValueError(f"--blocks-path {args.blocks_path}: {error}") from None

    def work() -> int:
        print(f"{args.model}: {type(model).__name__}")
        print(format_layer_map(layer_map))
        return 0

    return work

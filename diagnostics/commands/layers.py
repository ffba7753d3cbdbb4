"""`lisa layers MODEL`: print a model's layer map (groups, parameter counts, shares, tying)."""

from __future__ import annotations

import argparse
import sys


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


def run(args: argparse.Namespace) -> int:
    """Load the model, build its LayerMap and print it; 2 on a bad model name or blocks path."""
    from lisa.layers import LayerMap
    from lisa.models import load_model

    try:
        model, _ = load_model(args.model)
        layer_map = LayerMap.from_model(model, blocks_path=args.blocks_path)
    except ValueError as error:
        print(f"lisa layers: {error}", file=sys.stderr)
        return 2
    print(f"{args.model}: {type(model).__name__}")
    print(format_layer_map(layer_map))
    return 0

"""python -m jaxseg.convert IN.pkl|IN.pth|detectron2://X OUTDIR --config CFG [KEY VALUE ...]

Reads a published checkpoint (.pkl or PyTorch .pth, without PyTorch), maps it onto the model of CFG
by that model's checkpoint adapter (every tensor used or explicitly ignored) and writes an orbax
checkpoint directory that MODEL.WEIGHTS accepts. A zoo name is read from $JAXSEG_WEIGHTS (no download).
"""

from __future__ import annotations

import argparse
import sys

from jaxseg.cli_utils import run_cli


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m jaxseg.convert", description=" ".join(__doc__.splitlines()[2:5]))
    p.add_argument("input", help="checkpoint file (.pkl, .pth) or zoo name "
                   "(detectron2://X: a file under $JAXSEG_WEIGHTS)")
    p.add_argument("output", help="new directory for the converted checkpoint")
    p.add_argument("--config", "--config-file", dest="config", required=True, help="model config YAML")
    p.add_argument("opts", nargs="*", metavar="KEY VALUE", help="config overrides")
    return p.parse_intermixed_args(argv)


@run_cli
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import jax

    from jaxseg.checkpoint.loading import load_weights
    from jaxseg.checkpoint.orbax_io import save_variables
    from jaxseg.config import setup_cfg

    cfg = setup_cfg(args.config, args.opts)
    variables = load_weights(cfg, args.input)
    save_variables(args.output, variables)
    n = sum(v.size for v in jax.tree.leaves(variables))
    print(f"wrote {args.output}: {n:,} values from {args.input}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

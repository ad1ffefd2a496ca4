"""``python -m eapbench.zoo [train|eval] [options]``: rebuild the mini zoo (see :mod:`eapbench.zoo.build`),
or compare its children with sft (:mod:`eapbench.zoo.evaluate`); ``--smol``: the smol lineage
(:mod:`eapbench.zoo.smol`). Without a subcommand it trains, as before."""

import sys

from .build import main

if __name__ == "__main__":
    argv = sys.argv[1:]
    if argv[:1] == ["eval"]:
        from .evaluate import main as eval_main

        sys.exit(eval_main(argv[1:]))
    sys.exit(main(argv[1:] if argv[:1] == ["train"] else argv))

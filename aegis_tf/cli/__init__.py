"""The ``aegis`` command line. One module per command: each adds its parser
(flags named after the library fields they set) and calls one library function.

    aegis repair --threshold 4
    aegis detect --bad_model bd_net.h5
    aegis scan-zoo ZOO --out out/zoo
    aegis evaluate-goodnet --goodnet out/repair/goodnet_4.keras

Every command prints a summary, writes JSON (``--out``), and turns bad input
into a one-line error with exit status 2.
"""

import sys

from aegis_tf.cli import detect, evaluate_goodnet, evaluate_model, poison, repair, scan_zoo, train
from aegis_tf.cli._util import Parser
from aegis_tf.core.errors import AegisError

__all__ = ["main", "build_parser", "COMMANDS"]

COMMANDS = (repair, evaluate_goodnet, detect, scan_zoo, poison, train, evaluate_model)


def build_parser(prog="aegis"):
    parser = Parser(prog=prog, description="aegis-tf: backdoor attack, detection and repair for Keras models")
    sub = parser.add_subparsers(dest="command", parser_class=Parser, metavar="COMMAND")
    sub.required = True
    for module in COMMANDS:
        module.add(sub)
    return parser


def _import_keras_quietly():
    from aegis_tf.core.quiet import import_keras_quietly

    return import_keras_quietly()


def main(argv=None, prog="aegis"):
    """Run the CLI; returns the exit status (2 for bad input, 130 when interrupted)."""
    try:
        args = build_parser(prog).parse_args(argv)
        if getattr(args, "needs_keras", True):  # scan-zoo's driver does not: its workers do, seeded per model
            keras = _import_keras_quietly()
            keras.utils.set_random_seed(args.seed)  # the one place global RNGs are seeded
        return args.run(args)
    except AegisError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


def entry_point():
    """The ``aegis`` console script."""
    sys.exit(main())

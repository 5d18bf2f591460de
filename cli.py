"""``python cli.py ...``: the ``aegis`` command line (aegis_tf.cli), run from a checkout.

    python cli.py detect --bad_model bd_net.h5
    python cli.py repair --threshold 4
"""

import sys

from aegis_tf.cli import main

if __name__ == "__main__":
    sys.exit(main(prog="cli.py"))

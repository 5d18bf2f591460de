"""``aegis poison``: poison a training set (calls :func:`aegis_tf.api.poison`)."""

import os

from aegis_tf.cli._util import POISON_MODE, POISON_RATE, common_flags, data_flags, flag, trigger_flags, trigger_settings

NAME, ALIASES = "poison", ()


def add(sub):
    p = sub.add_parser(NAME, help="poison a training set; write CSAW .h5 and .npz; --preview saves a grid")
    data_flags(p)
    trigger_flags(p)
    flag(p, "--poison-rate", type=float, default=POISON_RATE,
         help="fraction of the training set poisoned (paper: 0.01 visible, 0.3 invisible)")
    flag(p, "--mode", choices=("append", "replace"), default=POISON_MODE,
         help="append poisoned copies or replace originals")
    flag(p, "--preview", action="store_true", help="save preview.png: clean and triggered samples for every trigger")
    flag(p, "--out-dir", default=os.path.join("out", "poison"), help="output folder (default %(default)s)")
    common_flags(p)
    p.set_defaults(run=run)
    return p


def run(args):
    from aegis_tf.api import poison
    from aegis_tf.core.utils import check_out_file, write_json

    check_out_file(args.out, "--out")
    report = poison(args.data, trigger_settings(args), poison_rate=args.poison_rate, mode=args.mode,
                    out_dir=args.out_dir, test_data=args.test_data, data_dir=args.data_dir, scale=args.scale,
                    preview=args.preview, seed=args.seed)
    what = "; ".join(f"{b['backdoor']}: {b['n_poisoned']} poisoned"
                     + (f", {b['n_cover']} cover" if "n_cover" in b else "")
                     + (f", {b['n_noise']} noise" if "n_noise" in b else "") for b in report["backdoors"])
    print(f"poisoned {report['n_train']} training images ({what}; {args.mode}); "
          f"wrote {', '.join(sorted(report['files'].values()))}")
    if args.out:
        write_json(args.out, report)
    return 0

"""`hydiscgan partition`: write one data file per SuperNode plus the server's shareable file.

    hydiscgan partition --dataset mosi-bclstm --num-partitions 3 --partition speaker --seed 0 --out DIR
                        [--msa-model context-gru]

writes DIR/partition-<i>.npz (client i's TRAIN rows, all modalities: copy it to data machine i only)
and DIR/server.npz (text and labels of every row, train, valid and test, audio/visual dropped, plus the
clients' feature widths: the only file the ServerApp needs, read through the dataset spec
"partitions:<DIR>"). The validation speakers (--valid-fraction times the training speakers, drawn with
--seed from the split --valid-from; MMSA's own valid split) are on no client: the server selects its
reported round on them.
With --msa-model naming a model that reads context (context-gru), iid and dirichlet assign whole videos,
as the simulation does for that model: pass the msa-model the run will use.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hydiscgan_fl.config import ConfigError, HyDiscGANConfig
from hydiscgan_fl.data import DataError, load_partition, write_partitions
from hydiscgan_fl.models import needs_context


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "partition",
        help="write per-client partition files and the server's shareable file for a deployment",
        description=__doc__.split("\n\n", 1)[0],
    )
    parser.add_argument("--dataset", default="mosi-bclstm",
                        help="dataset spec: mosi-bclstm, synthetic or mmsa:/abs/path.pkl (default: %(default)s)")
    parser.add_argument("--data-dir", default="",
                        help="folder holding mosi-bclstm/ (default: the checkout's data/ folder)")
    parser.add_argument("--num-partitions", type=int, required=True, help="number of clients (SuperNodes)")
    parser.add_argument("--partition", default="speaker",
                        help="rule: speaker, iid or dirichlet:<alpha> (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the partitioner and of the validation speakers (default: %(default)s)")
    parser.add_argument("--valid-fraction", type=float, default=HyDiscGANConfig().valid_fraction,
                        help="validation speakers, as a fraction of the training speakers (default: %(default)s)")
    parser.add_argument("--valid-from", default=HyDiscGANConfig().valid_from, choices=("auto", "train", "test"),
                        help="split the validation speakers are drawn from; auto: test for mosi-bclstm, whose "
                             "training features are fitted to its labels, train otherwise (default: %(default)s)")
    parser.add_argument("--msa-model", default=HyDiscGANConfig().msa_model,
                        help="the run's msa-model; one that reads context (context-gru) gets whole videos per "
                             "client under iid and dirichlet (default: %(default)s)")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    try:
        if args.num_partitions < 1:
            raise ConfigError(f"--num-partitions must be >= 1, got {args.num_partitions}")
        if str(args.dataset).startswith("partitions:"):
            raise ConfigError("--dataset must name the full dataset, not an existing partitions folder")
        # The same validation as a run's config (dataset form, partition rule, absolute data-dir).
        cfg = HyDiscGANConfig.from_run_config({"dataset": args.dataset, "partition": args.partition,
                                               "seed": args.seed, "data-dir": args.data_dir,
                                               "valid-fraction": args.valid_fraction, "valid-from": args.valid_from,
                                               "msa-model": args.msa_model})
        dataset = cfg.load_dataset()
        paths = write_partitions(dataset, args.num_partitions, cfg.partition, cfg.seed, args.out,
                                 whole_videos=needs_context(cfg))
    except (ConfigError, DataError, ValueError, OSError) as err:
        print(f"hydiscgan partition: error: {err}", file=sys.stderr)
        return 2
    for path in paths:
        part = load_partition(path)
        speakers = len(set(part.speakers.tolist()))
        splits = ", ".join(f"{name} {int((part.split == name).sum())}" for name in ("train", "valid", "test")
                           if (part.split == name).any())
        videos = len(set(part.videos.tolist()))
        print(f"{path}: {len(part)} utterances ({splits}), {speakers} speakers, {videos} videos, dims {part.dims}")
    print(f"server dataset spec: partitions:{Path(args.out).resolve()}")
    return 0

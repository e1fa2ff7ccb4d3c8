"""Loading a paper-protocol folder of the study's full size (2975 + 500 images at 416x208) into memory.

Each measurement runs in a fresh process (a cold start, as a user's script has), on a folder in the page cache:
`load_prepared(DIR, in_memory=True)`, then every split as arrays (subset splits are copies), and the default
lazy `load_prepared(DIR)`.

    python benchmarks/load_prepared.py [--rounds 2] [--train 2975 --val 500] [--no-record]
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from results import benchmark_arguments, markdown_table, record  # noqa: E402
from train_step import fake_paper_data  # noqa: E402

COLD = """
import json, sys, time
from cityscapes_lab import load_prepared
start = time.perf_counter()
data = load_prepared(sys.argv[1], in_memory=sys.argv[2] == "memory")
loaded = time.perf_counter()
arrays = [data.split(name) for name in data.splits]
if sys.argv[2] == "lazy":
    arrays = [a.images[:1] for a in arrays]  # touch one row of each
print(json.dumps({"load": loaded - start, "splits": time.perf_counter() - loaded,
                  "images": sum(len(a) for a in arrays) if sys.argv[2] == "memory" else None}))
"""


def main() -> None:
    parser = benchmark_arguments(__doc__)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--train", type=int, default=2975)
    parser.add_argument("--val", type=int, default=500)
    args = parser.parse_args()
    times: dict[str, list[dict]] = {"memory": [], "lazy": []}
    with tempfile.TemporaryDirectory() as tmp:
        data = fake_paper_data(Path(tmp) / "data", args.train, args.val)
        for path in (data / "arrays").iterdir():  # into the page cache
            path.read_bytes()
        for _ in range(args.rounds):
            for mode in times:
                out = subprocess.run([sys.executable, "-c", COLD, str(data), mode], capture_output=True, text=True,
                                     check=True)
                times[mode].append(json.loads(out.stdout.strip().splitlines()[-1]))
    rows = []
    for mode, label in (("memory", "load_prepared(DIR, in_memory=True)"), ("lazy", "load_prepared(DIR) (lazy)")):
        load = statistics.median(t["load"] for t in times[mode])
        splits = statistics.median(t["splits"] for t in times[mode])
        rows.append([label, f"{load:.2f}", f"{splits:.2f}", f"{load + splits:.2f}"])
    record(f"load_prepared: the paper protocol, {args.train + args.val} images at 416x208",
           markdown_table(["call", "load s", "all splits as arrays s", "total s"], rows),
           [f"fresh process per measurement, arrays in the page cache, median of {args.rounds}; random pixels.",
            "the subset splits (train_labeled, train_unlabeled, val, test) are copies of rows of the stored arrays; "
            "in a fresh process most of their time is the first touch of new memory."], save=not args.no_record)


if __name__ == "__main__":
    main()

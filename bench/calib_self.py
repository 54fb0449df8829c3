"""Self-calibration against WikiText-2 calibration, on dev (issue 31): the quickstart's run (SmolLM2,
20% of its blocks, 32 windows of 256 tokens, 8 scoring windows, today's default recipe) calibrated
on text the model samples itself (`--calib self`, what the quickstart uses: no corpus, no network)
or on WikiText-2 valid's calibration split (the protocol's), evaluated on SmolLM2's dev and test text.

    python bench/calib_self.py            # both cells (cached in bench/results/calib-self-smollm2/)
    python bench/calib_self.py --table"""
from __future__ import annotations

import sys

from common import pinned, require_assets, run_cell, splits
from frontier import table

SUITE = "calib-self-smollm2"
# the default of 2026-12-06 (trial of rate 0 included) at the quickstart's size
QUICKSTART = pinned(normalize_donors=None, distill="logits", rescore_limit="8", trial_rates="0", sparsity="0.2",
                    nsamples="32", seqlen="256", mi_samples="8")


def variants() -> dict[str, dict]:
    return {"self": {**QUICKSTART, "--calib": "self"}, "wikitext2": {**QUICKSTART, "--calib": str(splits()["wiki-calib"])}}


def main() -> None:
    if sys.argv[1:] == ["--table"]:
        print(table("smollm2", folder=SUITE))
        return
    require_assets()
    for name, settings in variants().items():
        cell = run_cell(SUITE, name, "smollm2", settings)
        if cell is not None:
            print(f"{name}: dev {cell['dev']} test {cell['test']} stages {cell['stages']}", flush=True)


if __name__ == "__main__":
    main()

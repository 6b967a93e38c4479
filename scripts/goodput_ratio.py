"""Print goodput / best of {no spec, static k} per batch size from a `dynaspec bench` JSON (issue 6): on
decode-phase tokens/s and on whole-batch tokens/s (prefill phase included, `batch_tokens_per_s`).

Usage: python scripts/goodput_ratio.py bench.json [--markdown]
"""

from __future__ import annotations

import json
import sys


def ratios(result: dict) -> list[dict]:
    """Per batch size: every line's tokens/s, the best static line, goodput's tokens/s and k histogram."""
    by_batch: dict[int, dict[str, dict]] = {}
    for p in result["points"]:
        by_batch.setdefault(p["batch_size"], {})[p["line"]] = p
    rows = []
    for batch in sorted(by_batch):
        lines = by_batch[batch]
        static = {n: p["decode_tokens_per_s"] for n, p in lines.items() if n == "no spec" or n.startswith("k=")}
        best = max(static, key=static.get)
        goodput = lines.get("goodput")
        whole = {n: p.get("batch_tokens_per_s") or 0.0 for n, p in lines.items() if n in static}
        best_whole = max(whole, key=whole.get)
        rows.append({
            "batch": batch, "static": static, "best": best, "best_tok_s": static[best],
            "goodput_tok_s": goodput["decode_tokens_per_s"] if goodput else None,
            "ratio": goodput["decode_tokens_per_s"] / static[best] if goodput else None,
            "k_histogram": goodput["k_histogram"] if goodput else None,
            "best_whole": best_whole,
            "ratio_whole": (goodput.get("batch_tokens_per_s") or 0.0) / whole[best_whole]
            if goodput and whole[best_whole] else None,
        })
    return rows


def main(argv: list[str]) -> int:
    if not argv or argv[0].startswith("-"):
        print(__doc__)
        return 2
    with open(argv[0]) as f:
        rows = ratios(json.load(f))
    names = list(rows[0]["static"])
    print("| batch | " + " | ".join(names) + " | goodput | goodput / best | whole batch: goodput / best | goodput k histogram |")
    print("|---:|" + "---:|" * (len(names) + 3) + "---|")
    for r in rows:
        cells = [f"{r['static'][n]:,.0f}" for n in names]
        ratio = "" if r["ratio"] is None else f"{r['ratio']:.2f} (vs {r['best']})"
        whole = "" if r["ratio_whole"] is None else f"{r['ratio_whole']:.2f} (vs {r['best_whole']})"
        good = "" if r["goodput_tok_s"] is None else f"{r['goodput_tok_s']:,.0f}"
        print(f"| {r['batch']} | " + " | ".join(cells) + f" | {good} | {ratio} | {whole} | {r['k_histogram']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

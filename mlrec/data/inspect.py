"""`mlrec shard --inspect`: what a shards folder holds, and a few samples read back as text."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mlrec.data.layout import ITEM_TOKENS, TOKENIZER_DIR, item_index, load_manifest, shard_files
from mlrec.data.loader import read_impressions


def describe(shards_dir: str | Path, peek: int = 2) -> str:
    """A manifest summary plus `peek` train samples decoded with the shards' tokenizer."""
    from transformers import AutoTokenizer

    shards_dir = Path(shards_dir)
    m = load_manifest(shards_dir)
    lines = [
        f"shards folder   {shards_dir}",
        f"tokenizer       {m['tokenizer']['source']} (sha256 {m['tokenizer']['sha256'][:12]})",
        f"items           {m['items']['count']} rows x {m['items']['max_tokens']} tokens; "
        + ", ".join(f"{k} {v}" for k, v in m["items"]["per_language"].items()),
    ]
    for split, info in m["splits"].items():
        size = sum(s["bytes"] for s in info["shards"]) / 2**20
        lines.append(
            f"{split:<15} {info['impressions']} impressions of {info['rows']} rows in "
            f"{len(info['shards'])} shards ({size:.1f} MiB); "
            + ", ".join(f"{k} {v}" for k, v in info["per_language"].items())
        )
    skipped = {p: c["skipped"] for p, c in m["rows"]["files"].items() if c["skipped"]}
    lines.append(f"on_error        {m['rows']['on_error']}; skipped rows: {skipped or 'none'}")
    tok = AutoTokenizer.from_pretrained(str(shards_dir / TOKENIZER_DIR))
    table = np.load(shards_dir / ITEM_TOKENS, mmap_mode="r")
    index = item_index(shards_dir)

    def show(row: int) -> str:
        text = tok.decode(table[row], skip_special_tokens=True)
        return f"{index[row][0]} [{index[row][2]}] {text}"

    for n, imp in enumerate(read_impressions(shard_files(shards_dir, "train"))):
        if n == peek:
            break
        lines.append(f"\nimpression {imp['impression']} (user {imp['user']}, {imp['lang']})")
        lines += [f"  clicked   {show(r)}" for r in imp["history"][-3:]]
        lines += [
            f"  shown {'+' if y else '-'}   {show(r)}"
            for r, y in sorted(
                zip(imp["candidates"], imp["labels"], strict=True), key=lambda c: -c[1]
            )
        ][:4]
    return "\n".join(lines)

#!/usr/bin/env python
"""How many greedy generations a trimmed decoder keeps identical, per vocabulary size and per
``trim.self_generated`` weight, without building a single trimmed model.

A trimmed decoder's logits are the original's logits at the kept ids (the head rows are sliced, the
body is untouched), so its greedy generation from an in-vocabulary prompt equals the original's
exactly when every token the original generates is kept. This script generates once with the
original model (the recipe's verify.generation prompts), mines the recipe's corpus like `convert`
(same required ids, same BPE closure), and counts identical generations and parameters for each
combination of --sizes (trim.target_vocab_size) and --weights (trim.self_generated.weight; 0 = off).

    python scripts/probe_self_generated.py recipes/gemma3-270m-vocab-fr.yaml --sizes 10700 --weights 0 1 2 4
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("recipe", type=Path)
    ap.add_argument("--sizes", type=int, nargs="+", help="target_vocab_size values (default: the recipe's)")
    ap.add_argument("--weights", type=int, nargs="+", default=[0, 1, 2, 4])
    ap.add_argument("--prompts", type=int, default=None, help="self_generated.prompts (default: the recipe's, or 256)")
    ap.add_argument("--out", type=Path, default=None, help="write the table as JSON here")
    args = ap.parse_args(argv)

    from transformers import AutoTokenizer

    from tokexport.tasks.vocab_trim_inputs import load_checkpoint, resolve_model_dir, tokens_to_keep
    from tokexport.tasks.vocab_trim_keep import required_ids
    from tokexport.vocab.corpus import encode_all, load_corpus, mine
    from tokexport.vocab.model import count_params
    from tokexport.vocab.recipe import SelfGenerated, validate_vocab_recipe
    from tokexport.vocab.selfgen import self_generated_counts
    from tokexport.vocab.tokenizer import complete_keep, inspect_tokenizer
    from tokexport.vocab.verify import greedy_generations

    recipe = validate_vocab_recipe(str(args.recipe), yaml.safe_load(args.recipe.read_text()))
    base = args.recipe.resolve().parent
    g = recipe.verify.generation
    if g is None:
        print(f"{args.recipe}: not a decoder recipe (no verify.generation)", file=sys.stderr)
        return 2
    model_dir, _ = resolve_model_dir(recipe.model, base)
    tok = AutoTokenizer.from_pretrained(model_dir)
    state = json.loads(tok.backend_tokenizer.to_str())
    info = inspect_tokenizer(state)
    lookup = dict(tok.backend_tokenizer.get_vocab(with_added_tokens=True))
    model, _ = load_checkpoint(model_dir, "decoder")
    rows, hidden = model.get_input_embeddings().weight.shape
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    body = count_params(model) - rows * hidden * (1 if tied else 2)
    required, _ = required_ids(recipe, info, lookup, model, tokens_to_keep(recipe, base, lookup))
    forced = {i for ids in required.values() for i in ids}
    corpus = load_corpus(recipe.corpus, base)

    def encode_special(texts):
        return tok(texts, add_special_tokens=True)["input_ids"]

    def encode_plain(texts):
        return tok(texts, add_special_tokens=False)["input_ids"]

    mining_ids = [ids for docs in corpus.mining.values() for ids in encode_all(encode_special, docs)]
    prompts = [tok(p, add_special_tokens=True)["input_ids"] for p in g.prompts]
    originals = greedy_generations(model, prompts, g.max_new_tokens, tok.pad_token_id)
    sg = recipe.trim.self_generated or SelfGenerated()
    if args.prompts:
        sg = sg.model_copy(update={"prompts": args.prompts})
    gen_counts, gen_info = self_generated_counts(
        model,
        sg.model_copy(update={"weight": 1}),
        mining_ids,
        rows,
        tok.pad_token_id if tok.pad_token_id is not None else 0,
    )
    print(f"self-generated: {gen_info}", flush=True)
    table = []
    for size in args.sizes or [recipe.trim.target_vocab_size]:
        for w in args.weights:
            trim = recipe.trim.model_copy(update={"target_vocab_size": size})
            mined = mine(corpus, encode_special, encode_plain, rows, trim, forced, gen_counts * w if w else None)
            keep, _ = complete_keep(state, forced | {int(i) for i in mined.selected})
            mask = np.zeros(rows, dtype=bool)
            mask[keep] = True
            same = sum(
                bool(mask[np.asarray(p)].all() and mask[np.asarray(o, dtype=np.int64)].all())
                for p, o in zip(prompts, originals)
            )
            row = {
                "target_vocab_size": size,
                "weight": w,
                "kept": len(keep),
                "params": int(body + len(keep) * hidden * (1 if tied else 2)),
                "identical": same,
                "prompts": len(prompts),
            }
            table.append(row)
            print(
                f"size {size:>6} weight {w:>3}: kept {len(keep):>6}, {row['params'] / 1e6:6.1f}M parameters, "
                f"{same}/{len(prompts)} generations identical",
                flush=True,
            )
    if args.out:
        args.out.write_text(
            json.dumps({"recipe": str(args.recipe), "self_generated": gen_info, "rows": table}, indent=2)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

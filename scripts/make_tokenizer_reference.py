#!/usr/bin/env python3
"""Writes tests/data/tokenizer/reference_<name>.json: the ids and decoded text that Hugging Face
`tokenizers` (and, for load_dir, `transformers`) produce for every text of corpus.json.

These files are the golden data of troupe's tokenizer tests; never edit them by hand. Run on a machine
with `tokenizers` and `transformers` (the GPU machine has both):

  python3 scripts/make_tokenizer_reference.py --corpus tests/data/tokenizer/corpus.json \
      --out tests/data/tokenizer MODEL_DIR...

Each MODEL_DIR holds tokenizer.json (or tokenizer.json.gz) and tokenizer_config.json; the reference is
named after the directory.
"""
import argparse
import gzip
import json
import os
import random
import shutil
import sys
import tempfile

import tokenizers
from tokenizers import Tokenizer


def unpack(model_dir, scratch):
    """Returns a directory with a plain tokenizer.json (gunzipped into scratch when needed)."""
    if os.path.exists(os.path.join(model_dir, "tokenizer.json")):
        return model_dir
    out = os.path.join(scratch, os.path.basename(os.path.normpath(model_dir)))
    os.makedirs(out, exist_ok=True)
    with gzip.open(os.path.join(model_dir, "tokenizer.json.gz"), "rb") as src, open(
        os.path.join(out, "tokenizer.json"), "wb"
    ) as dst:
        shutil.copyfileobj(src, dst)
    for name in os.listdir(model_dir):
        if name.endswith(".json"):
            shutil.copy(os.path.join(model_dir, name), out)
    return out


def random_id_lists(tok, seed, count):
    """Random id sequences: decode must handle partial UTF-8 bytes and specials anywhere."""
    rng = random.Random(seed)
    vocab = tok.get_vocab_size(with_added_tokens=True)
    specials = sorted(i for i, t in tok.get_added_tokens_decoder().items() if t.special)
    out = []
    for _ in range(count):
        n = rng.randint(1, 24)
        ids = []
        for _ in range(n):
            r = rng.random()
            if r < 0.1 and specials:
                ids.append(rng.choice(specials))
            elif r < 0.3:
                ids.append(rng.randrange(0, min(vocab, 600)))  # byte tokens and short pieces
            else:
                ids.append(rng.randrange(0, vocab))
        out.append(ids)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("dirs", nargs="+")
    args = ap.parse_args()
    corpus = json.load(open(args.corpus, encoding="utf-8"))
    scratch = tempfile.mkdtemp()
    for model_dir in args.dirs:
        name = os.path.basename(os.path.normpath(model_dir))
        path = unpack(model_dir, scratch)
        tok = Tokenizer.from_file(os.path.join(path, "tokenizer.json"))
        entries = []
        for text in corpus:
            with_special = tok.encode(text, add_special_tokens=True).ids
            entries.append(
                {
                    "text": text,
                    "ids": tok.encode(text, add_special_tokens=False).ids,
                    "ids_special": with_special,
                    "decoded_skip": tok.decode(with_special, skip_special_tokens=True),
                    "decoded_keep": tok.decode(with_special, skip_special_tokens=False),
                }
            )
        decodes = []
        for ids in random_id_lists(tok, seed=len(name) * 7919, count=40):
            decodes.append(
                {
                    "ids": ids,
                    "decoded_skip": tok.decode(ids, skip_special_tokens=True),
                    "decoded_keep": tok.decode(ids, skip_special_tokens=False),
                }
            )
        ref = {
            "name": name,
            "tokenizers_version": tokenizers.__version__,
            "vocab_size": tok.get_vocab_size(with_added_tokens=True),
            "entries": entries,
            "random_decodes": decodes,
        }
        # load_dir semantics (tokenizer_config.json: add_bos_token, bos/eos) follow transformers.
        try:
            import transformers
            from transformers import AutoTokenizer

            at = AutoTokenizer.from_pretrained(path)
            ref["transformers_version"] = transformers.__version__
            ref["transformers"] = {
                "bos_token": at.bos_token,
                "eos_token": at.eos_token,
                "bos_id": at.bos_token_id,
                "eos_id": at.eos_token_id,
                "ids_special": [at(text, add_special_tokens=True)["input_ids"] for text in corpus],
            }
        except Exception as e:  # recorded, so the test can say why it has nothing to compare
            ref["transformers_error"] = f"{type(e).__name__}: {e}"
        out = os.path.join(args.out, f"reference_{name}.json")
        with open(out, "w", encoding="utf-8") as f:
            json.dump(ref, f, ensure_ascii=False, indent=0)
        print(f"wrote {out}: {len(entries)} texts", file=sys.stderr)


if __name__ == "__main__":
    main()

"""Train the byte-level BPE tokenizer bundled for `model=tiny` (actexp/assets/tiny_tokenizer.json).

Run once by a maintainer; the result is committed, so installs never need the hub:
    python scripts/make_tiny_tokenizer.py
It learns from the docstrings of the running Python's standard library (English prose that
every Python installation carries). Id 0 is `<|endoftext|>`, as in Pythia.
"""

from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from actexp.data.corpus import python_docs

VOCAB_SIZE = 4096
OUT = Path(__file__).resolve().parents[1] / "actexp" / "assets" / "tiny_tokenizer.json"


def main():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator((doc.text for doc in python_docs()), trainer=trainer)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(OUT))
    print(f"wrote {OUT} ({tok.get_vocab_size()} tokens)")


if __name__ == "__main__":
    main()

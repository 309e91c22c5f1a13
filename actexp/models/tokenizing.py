"""Texts to token ids, exactly as the forward pass gets them: the model's tokenizer (the checkpoint's,
model.tokenizer, a GGUF file's own, or the bundled one), its BOS rule and truncation."""

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from ..errors import UserError
from . import gguf
from .hub import hub_revision, load_pretrained
from .prompting import Prompt
from .prompting import encode as encode_in_prompt
from .spec import BUNDLED_TOKENIZER, ModelSpec, local_source


@dataclass
class TextEncoder:
    """A model's tokenizer with its BOS and truncation rule: exactly the ids the forward pass gets."""

    tokenizer: object
    max_tokens: int
    bos_id: Optional[int]  # prepended to every text; None: model.prepend_bos=false
    prompt: Prompt = Prompt()

    def encode(self, texts: Sequence[str]) -> Tuple[List[List[int]], List[bool]]:
        return self.encode_spans(texts)[:2]

    def encode_spans(self, texts: Sequence[str]) -> Tuple[List[List[int]], List[bool], List[Tuple[int, int]]]:
        """(ids, truncated, spans): the templated sequences and the [start, end) each vector pools."""
        return encode_in_prompt(self.tokenizer, texts, self.max_tokens, self.bos_id, self.prompt)


def text_encoder(spec: "ModelSpec", max_tokens: int, config, tokenizer=None,
                 hash_cache: Optional[Path] = None) -> TextEncoder:
    """The TextEncoder of a spec; the BOS id is the tokenizer's, else the model config's."""
    tokenizer = tokenizer or load_tokenizer(spec, hash_cache)
    prompt = spec.prompt_of()
    if not spec.prepend_bos:
        return TextEncoder(tokenizer, max_tokens, None, prompt)
    bos_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else getattr(config, "bos_token_id", None)
    if bos_id is None:
        raise UserError("model.prepend_bos=true but the tokenizer has no BOS token: set model.prepend_bos=false")
    return TextEncoder(tokenizer, max_tokens, bos_id, prompt)


def load_tokenizer(spec: ModelSpec, hash_cache: Optional[Path] = None):
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    if spec.tokenizer:
        source, key, revision = spec.tokenizer, "model.tokenizer", None
    elif spec.gguf:  # the GGUF file's own tokenizer, converted with its weights
        return load_pretrained(AutoTokenizer, str(gguf.converted(spec.gguf, hash_cache)), True, "converted GGUF tokenizer")
    elif not (spec.random_init or spec.weights):
        source, key, revision = spec.name_or_path, "model.name_or_path", spec.revision
    else:  # random or bundled weights: the bundled tokenizer, so the vectors depend on nothing downloaded
        return PreTrainedTokenizerFast(tokenizer_file=str(BUNDLED_TOKENIZER),
                                       bos_token="<|endoftext|>", eos_token="<|endoftext|>")
    revision = hub_revision(source, revision, key)
    local = local_source(source, key)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_pretrained(AutoTokenizer, local or source, bool(local), "tokenizer", revision=revision,
                     trust_remote_code=spec.trust_remote_code)

"""A text inside a prompt (the `prompt` group): the token ids of the templated sequence and the span
of them each vector pools.

A template holds `{text}` once, the copy of the text whose tokens the span `text` names, and
`{copy}` any number of times: the text again, read by the model but never pooled (echo embeddings
put one copy before the pooled one). The pieces are tokenised apart and joined, so the text's
tokens are exactly its tokens alone (after the one space that ends the piece before it, if any):
a BPE merge across the template's edge (`."` is one token of GPT-2's vocabulary) can never pull a
template character into the span or push a text character out of it. With `chat`, the tokenizer's own chat template is put around the template as a user
message, ending where the assistant's answer would start.
"""

import re
from dataclasses import asdict, dataclass
from typing import List, Optional, Sequence, Tuple

from ..errors import UserError

SPANS = ("text", "all", "last")  # the text's tokens | the whole sequence | the sequence's last token
PLACEHOLDER = re.compile(r"\{(text|copy)\}")


@dataclass(frozen=True)
class Prompt:
    """How a text becomes a sequence (template, chat) and which of its tokens are pooled (span)."""

    name: str = "none"
    template: Optional[str] = None  # one {text}, any {copy}; None: the bare text (prompt=none)
    chat: bool = False
    span: str = "text"

    def __post_init__(self):
        if self.span not in SPANS:
            raise UserError(f"prompt.span={self.span}: use text (the text's tokens), all (the whole sequence) or "
                            "last (the sequence's last token)")
        if self.template is not None:
            unknown = sorted(set(re.findall(r"\{\w+\}", self.template)) - {"{text}", "{copy}"})
            if unknown:  # a typo ({txt}, {coppy}) would reach the model as literal text
                raise UserError(f"prompt.template {self.template!r} has {', '.join(unknown)}: only {{text}} (the "
                                "pooled copy) and {copy} (the text again, unpooled) are filled in")
            n = len(re.findall(r"\{text\}", self.template))
            if n != 1:
                raise UserError(f"prompt.template {self.template!r} holds {{text}} {n} times: give it exactly once "
                                "(the pooled copy; {copy} repeats the text unpooled)")

    @property
    def plain(self) -> bool:
        """The bare text, as before prompts existed: every token of the sequence is the text's."""
        return self.template is None and not self.chat

    def record(self) -> Optional[dict]:
        """What the model identity names: None for the bare text pooled whole (span text and all are the
        same there), so the means and stores made before prompts existed keep their ids. The name is
        not in it: the same template under two names makes the same vectors."""
        return None if self.plain and self.span != "last" else {k: v for k, v in asdict(self).items() if k != "name"}

    def mean_record(self) -> Optional[dict]:
        """What changes the activations (not the span): the corpus mean's part of the identity."""
        return None if self.plain else {"template": self.template, "chat": self.chat}

    def pieces(self, tokenizer, bos_id: Optional[int] = None) -> List[object]:
        """The template as [ids of a literal piece | (placeholder, lead)], the chat template applied. A
        space that ends the piece before a placeholder goes to the text instead ("lead"), so the text's
        first word is tokenised as it is inside running prose (" The", not " " then "The")."""
        template = self.template or "{text}"
        if self.chat:
            if not getattr(tokenizer, "chat_template", None):
                raise UserError("prompt.chat=true (prompt=chat), but this model's tokenizer has no chat template: use "
                                "prompt.chat=false (prompt=prompteol or a prompt.template), or an instruct model "
                                "(model=smollm2-135m-q4)")
            template = tokenizer.apply_chat_template([{"role": "user", "content": template}], tokenize=False,
                                                     add_generation_prompt=True)
            bos = tokenizer.bos_token
            if bos_id is not None and bos and template.startswith(bos):  # model.prepend_bos adds it already
                template = template[len(bos):]
        out, at = [], 0
        for match in PLACEHOLDER.finditer(template):
            literal = template[at:match.start()]
            lead = " " if literal.endswith(" ") else ""
            literal = literal[:len(literal) - len(lead)]
            if literal:
                out.append(tokenizer(literal, add_special_tokens=False)["input_ids"])
            out.append((match.group(1), lead))
            at = match.end()
        if at < len(template):
            out.append(tokenizer(template[at:], add_special_tokens=False)["input_ids"])
        return out


def encode(tokenizer, texts: Sequence[str], max_tokens: int, bos_id: Optional[int], prompt: Prompt
           ) -> Tuple[List[List[int]], List[bool], List[Tuple[int, int]]]:
    """(ids, truncated, spans): each text's sequence (bos_id first if given), whether its text was
    cut to fit max_tokens (the template is kept whole: only the text's copies shrink), and the
    [start, end) of the pooled span in it."""
    pieces = [("text", "")] if prompt.plain else prompt.pieces(tokenizer, bos_id)
    leads = {p[1] for p in pieces if isinstance(p, tuple)}
    alone = {lead: tokenizer([lead + t for t in texts], add_special_tokens=False)["input_ids"] for lead in leads}
    head = [] if bos_id is None else [bos_id]
    fixed = len(head) + sum(len(p) for p in pieces if isinstance(p, list))
    copies = sum(1 for p in pieces if isinstance(p, tuple))
    room = (max_tokens - fixed) // copies
    if room < 1:
        raise UserError(f"the prompt takes {fixed} of model.max_tokens={max_tokens} tokens, leaving no room for the "
                        "text: shorten prompt.template or raise model.max_tokens")
    ids, truncated, spans = [], [], []
    for i in range(len(texts)):
        sequence, span, cut = list(head), None, False
        for piece in pieces:
            if isinstance(piece, list):
                sequence += piece
                continue
            kind, lead = piece
            kept = alone[lead][i][:room]
            cut = cut or len(alone[lead][i]) > room
            if kind == "text":
                span = (0 if prompt.plain else len(sequence), len(sequence) + len(kept))
            sequence += kept
        if prompt.span == "all":
            span = (0, len(sequence))
        elif prompt.span == "last":
            span = (len(sequence) - 1, len(sequence))
        if span[1] <= span[0]:
            raise UserError(f"text {i} ({texts[i][:30]!r}) has no tokens, so prompt.span={prompt.span} is empty for it: "
                            "give non-empty texts")
        ids.append(sequence)
        truncated.append(cut)
        spans.append(span)
    return ids, truncated, spans

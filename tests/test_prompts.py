"""Texts inside prompts (the `prompt` group): exact spans where BPE merges across the template's
edge, the pooled span against the hook-free reference, the mean under a template, prompt=none
unchanged, and bad input."""

import copy
import hashlib
import json

import pytest
import torch

from actexp import jobs
from actexp.backends.local import LocalBackend
from actexp.errors import UserError
from actexp.jobs.common import chunks as chunks_from_cfg
from actexp.jobs.common import configured_mean_path, corpus_of
from actexp.models.identity import model_identity
from actexp.models.prompting import Prompt, encode
from actexp.models.tokenizing import load_tokenizer
from actexp.models.spec import ModelSpec
from helpers import LONG, TEXTS, compose_cfg, reference_model, reference_stream, reference_weights, rel_err, run_clis

# The sha256 of `python -m actexp.run job=csv` (the 20 samples, raw, long pooling, model=tiny) made by
# commit 9b39116, before prompts existed: prompt=none must give these vectors byte for byte.
CSV_BEFORE_PROMPTS = {(): "4ccd733218d56eab0df85bb90ea3ad843cad4a004bbafc1978a3fd7a01a4bdf7",
                      ("model.prepend_bos=true", "model.max_tokens=8"):  # the BOS pooled, every text cut
                      "57addcfde27ffe557929f0eb0b13a6f9f84b3403ed4e8d25e4174436d47819c6"}


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(ModelSpec(weights="bundled"))  # the bundled tokenizer of model=tiny


def _tokens(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("template, text", [("pre{text} and more", "fix it"),  # "prefix" is one token
                                             ("Read: {text}fix", "it pre")])  # " prefix" is one token
def test_the_span_is_exactly_the_texts_tokens_where_bpe_merges_across_the_templates_edge(tokenizer, template, text):
    before, after = template.split("{text}")
    lead = " " if before.endswith(" ") else ""  # a space that ends the piece before the text goes with the text
    whole = _tokens(tokenizer, before + text + after)
    # The premise: tokenised as one string, a token spans the template's edge, so no slice of it is the text.
    assert not any(tokenizer.decode(whole[s:e]) == lead + text for s in range(len(whole)) for e in range(s, len(whole) + 1))
    [ids], [cut], [(start, end)] = encode(tokenizer, [text], 2048, None, Prompt(template=template))
    assert ids[start:end] == _tokens(tokenizer, lead + text) and tokenizer.decode(ids[start:end]) == lead + text
    assert ids[:start] == _tokens(tokenizer, before[:len(before) - len(lead)]) and ids[end:] == _tokens(tokenizer, after)
    assert not cut
    # With BOS: everything moves by one, the BOS is not in the span.
    [ids], _, [(s, e)] = encode(tokenizer, [text], 2048, 7, Prompt(template=template))
    assert ids[0] == 7 and (s, e) == (start + 1, end + 1)


def test_a_chat_template_wraps_the_template_and_its_bos_is_not_doubled(tokenizer):
    chat = copy.deepcopy(tokenizer)
    chat.chat_template = ("{{ bos_token }}<user>{{ messages[0]['content'] }}</user>"
                          "{% if add_generation_prompt %}<bot>{% endif %}")
    bos = chat.convert_tokens_to_ids(chat.bos_token)
    text = TEXTS[1]
    for bos_id in (None, bos):
        [ids], _, [(start, end)] = encode(chat, [text], 2048, bos_id, Prompt(template='Say "{text}"', chat=True))
        assert chat.decode(ids) == f'{chat.bos_token}<user>Say "{text}"</user><bot>' and ids.count(bos) == 1
        assert ids[start:end] == _tokens(chat, text)
    [ids], _, [span] = encode(chat, [text], 2048, None, Prompt(template="{text}", chat=True, span="last"))
    assert span == (len(ids) - 1, len(ids)) and ids[-len(_tokens(chat, "<bot>")):] == _tokens(chat, "<bot>")


def test_echo_pools_the_second_copy_and_truncation_keeps_the_template_whole(tokenizer):
    prompt = Prompt(template="Again: {copy} then {text}.")
    text = TEXTS[1]
    words, head, mid = _tokens(tokenizer, " " + text), _tokens(tokenizer, "Again:"), _tokens(tokenizer, " then")
    n = len(words)
    [ids], [cut], [(start, end)] = encode(tokenizer, [text], 2048, None, prompt)
    assert ids == head + words + mid + words + _tokens(tokenizer, ".") and not cut
    assert (start, end) == (len(head) + n + len(mid), len(head) + 2 * n + len(mid))
    # 30 tokens: the template's stay, each copy keeps (30 - template) // 2 of the text's tokens.
    fixed = len(ids) - 2 * n
    [short], [cut], [(start, end)] = encode(tokenizer, [text], 30, None, prompt)
    keep = (30 - fixed) // 2
    assert cut and short == head + words[:keep] + mid + words[:keep] + _tokens(tokenizer, ".")
    assert short[start:end] == words[:keep]
    with pytest.raises(UserError, match="the prompt takes .* leaving no room"):
        encode(tokenizer, [text], fixed + 1, None, prompt)
    with pytest.raises(UserError, match="text 1 .* has no tokens, so prompt.span=text is empty"):
        encode(tokenizer, [text, ""], 2048, None, Prompt(template="{text}."))
    # The span `all` and `last` of the same sequence.
    [_], _, [span_all] = encode(tokenizer, [text], 2048, None, Prompt(template=prompt.template, span="all"))
    [_], _, [span_last] = encode(tokenizer, [text], 2048, None, Prompt(template=prompt.template, span="last"))
    assert span_all == (0, len(ids)) and span_last == (len(ids) - 1, len(ids))


def test_a_placeholder_other_than_text_and_copy_is_refused_by_name():
    for template in ("Say {txt} once", "Rewrite: {coppy}\nRewritten: {text}"):
        with pytest.raises(UserError, match=r"has \{(txt|coppy)\}: only \{text\} \(the pooled copy\) and \{copy\}"):
            Prompt(template=template)
    with pytest.raises(UserError, match=r"holds \{text\} 2 times: give it"):
        Prompt(template="{text} and {text}, {copy}")
    assert Prompt(template="Braces {} and {not a word} stay: {copy} {text}").template  # only {word} is a placeholder


@pytest.mark.parametrize("overrides", [("prompt=prompteol",), pytest.param(("prompt=echo",), marks=pytest.mark.slow),
                                       pytest.param(("prompt=echo", "prompt.span=all"), marks=pytest.mark.slow),
                                       pytest.param(("prompt=prompteol", "model.prepend_bos=true", "hardware.packing=false"),
                                                    marks=pytest.mark.slow)])
def test_the_pooled_span_equals_the_hook_free_reference(overrides):
    """Each text's vector pools its span of the templated sequence: the closed-form weights over the span's
    tokens of output_hidden_states (no hooks), for texts packed together; PromptEOL's span is the last
    token, so every chunk is that position's layer mean."""
    cfg = compose_cfg(*overrides)
    backend = LocalBackend.from_config(cfg)
    got = backend.vectors(TEXTS, chunks_from_cfg(cfg.pooling)).raw  # [N, 4H]
    ref = reference_model(backend.lm.model)
    ids, _, spans = backend.lm.text.encode_spans(TEXTS)
    for i, (seq, (start, end)) in enumerate(zip(ids, spans)):
        h = reference_stream(ref, seq).mean(0)[start:end]  # [n, H]
        want = torch.cat([reference_weights(kind, alpha, end - start) @ h for kind, alpha in LONG])
        assert rel_err(got[i], want) < 1e-6, (overrides, i)
    if cfg.prompt.span == "last":
        H = backend.lm.hidden_size
        assert all(torch.equal(got[:, :H], got[:, c * H:(c + 1) * H]) for c in range(4))


@pytest.mark.slow  # a mean job or CLI children: over 10 s
def test_a_centred_vector_inside_a_template_subtracts_the_mean_of_the_same_positions(tmp_path):
    """The mean is made under the template (every position of the templated documents); the centred
    vector of a span subtracts mu_t at the span's positions in the whole sequence."""
    overrides = ["prompt=echo", "corpus=samples", "centering=corpus_mean", "centering.min_count=2",
                 "centering.tail_start=4", f"paths.artifacts={tmp_path / 'art'}"]
    jobs.run("mean", compose_cfg(*overrides), tmp_path / "mean")
    cfg = compose_cfg(*overrides)
    from actexp.jobs.common import corpus_mean

    mean = corpus_mean(cfg)
    assert mean.metadata["prompt"] == {"template": cfg.prompt.template, "chat": False}
    backend = LocalBackend.from_config(cfg)
    ref = reference_model(backend.lm.model)
    sums = torch.zeros_like(mean.sum)  # [P, H]: the mean's documents inside the template, every position
    for seq in backend.lm.text.encode_spans([d.text for d in corpus_of(cfg).documents()])[0]:
        sums[:len(seq)] += reference_stream(ref, seq).mean(0)
    assert rel_err(mean.sum, sums) < 1e-6
    out = backend.vectors(TEXTS[:2], chunks_from_cfg(cfg.pooling), mean)
    ids, _, spans = backend.lm.text.encode_spans(TEXTS[:2])
    for i, (seq, (start, end)) in enumerate(zip(ids, spans)):
        h = reference_stream(ref, seq).mean(0) - mean.rows(len(seq)).double()  # [T, H]: mu_t by its position
        want = torch.cat([reference_weights(kind, alpha, end - start) @ h[start:end] for kind, alpha in LONG])
        assert rel_err(out.centered[i], want) < 1e-6
        assert start > 0


@pytest.mark.slow  # a mean job or CLI children: over 10 s
def test_a_template_changes_the_means_id_the_span_does_not_and_a_mean_of_another_prompt_is_refused(tmp_path):
    def mean_id(*overrides):
        return configured_mean_path(compose_cfg(*overrides)).parent.name

    bare, eol = mean_id(), mean_id("prompt=prompteol")
    assert len({bare, eol, mean_id("prompt=echo")}) == 3
    assert eol == mean_id("prompt=prompteol", "prompt.span=text") == mean_id("prompt=prompteol", "prompt.span=all")
    assert mean_id("prompt.span=all") == bare  # the bare text pooled whole, as before prompts
    assert mean_id("prompt=prompteol", "prompt.chat=true") != eol
    assert "prompt" not in model_identity(compose_cfg())
    assert model_identity(compose_cfg("prompt=prompteol"))["prompt"]["span"] == "last"
    # A mean made inside a template, given by path to a run of the bare text: refused in one line.
    made = ["corpus=samples", "centering.min_count=2", "centering.tail_start=4", f"paths.artifacts={tmp_path}"]
    jobs.run("mean", compose_cfg("prompt=prompteol", *made), tmp_path / "mean")
    path = configured_mean_path(compose_cfg("prompt=prompteol", *made))
    with pytest.raises(UserError, match="does not fit this model: it has prompt="):
        jobs.run("extract", compose_cfg(*made, "centering=corpus_mean", f"centering.mean_path={path}", "text=Hello"),
                 tmp_path / "x")


@pytest.mark.parametrize("overrides", list(CSV_BEFORE_PROMPTS))
def test_prompt_none_gives_the_vectors_of_before_prompts_byte_for_byte(tmp_path, overrides):
    jobs.run("csv", compose_cfg("logger=none", f"paths.artifacts={tmp_path}", *overrides), tmp_path)
    [csv] = tmp_path.glob("vectors_*.csv")
    assert hashlib.sha256(csv.read_bytes()).hexdigest() == CSV_BEFORE_PROMPTS[overrides]
    assert "prompt" not in json.loads(csv.with_suffix(".json").read_text())["model"]


@pytest.mark.slow  # a csv job
def test_records_name_the_template(tmp_path):
    jobs.run("csv", compose_cfg("logger=none", "prompt=echo", f"paths.artifacts={tmp_path}"), tmp_path)
    [sidecar] = tmp_path.glob("vectors_*.json")
    made = json.loads(sidecar.read_text())
    template = compose_cfg("prompt=echo").prompt.template
    assert made["model"]["prompt"] == {"template": template, "chat": False, "span": "text"}  # in the identity
    assert made["prompt"] == {"name": "echo", "template": template, "chat": False, "span": "text"}


@pytest.mark.slow  # a mean job or CLI children: over 10 s
def test_bad_prompts_are_one_line_and_exit_2(tmp_path):
    results = run_clis([["job=extract", "text=Hello", "prompt.template='no text here'"],
                        ["job=extract", "text=Hello", "prompt.template='{text} and {text}'"],
                        ["job=extract", "text=Hello", "prompt=chat"],
                        ["job=csv", "model.layers=each"],
                        ["job=mean", "prompt=chat", "corpus=samples", f"paths.artifacts={tmp_path / 'art'}"],
                        ["job=extract", "text=Hi", "centering=corpus_mean", "prompt=echo",
                         f"paths.artifacts={tmp_path / 'art'}"]], cwd=tmp_path)
    expected = ["holds {text} 0 times", "holds {text} 2 times", "has no chat template",
                "model.layers=each gives one vector per block", "has no chat template",
                f"compute it with `python -m actexp.run job=mean prompt=echo paths.artifacts={tmp_path / 'art'}`"]
    assert not (tmp_path / "art" / "stats").exists()  # the chat prompt was refused before the mean's work
    for result, message in zip(results, expected):
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], result.stderr
    assert not list(tmp_path.glob("experiments/*/*/vector*"))

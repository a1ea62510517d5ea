"""The encoder's hidden-state tap (``encoder_tap``): each tap equals a hand computation on the tiny
model, the taps differ, and a bad value is refused before any model loads."""

from __future__ import annotations

import pytest
import torch

from workbench.config import ConfigError, compose, to_run_config
from workbench.errors import InputError
from workbench.models.components import build_components
from workbench.stages.encode import encode_prompts

PROMPT = "a small red circle on the left, on a blue background"


@pytest.fixture(scope="module")
def parts():
    cfg = to_run_config(compose(["model=tiny_random"]))
    c = build_components(cfg.model, cfg.precision, cfg.device)
    return c.tokenizer, c.text_encoder.eval(), cfg.template


def _by_hand(tokenizer, text_encoder, template):
    """The states of the kept tokens, computed without the tap code: every recorded hidden state, and the
    final norm's input caught around the language model's own norm."""
    from workbench.templates import render, tokenize

    t = tokenize(tokenizer, render(template, PROMPT, 0, tokenizer))
    ids = torch.tensor([t.input_ids])
    norm = text_encoder.model.language_model.norm
    seen = []
    handle = norm.register_forward_hook(lambda m, args, out: seen.append((args[0], out)))
    with torch.no_grad():
        out = text_encoder(input_ids=ids, attention_mask=torch.ones_like(ids), output_hidden_states=True)
    handle.remove()
    pre, post = seen[0]
    return t.drop, out.hidden_states, pre, post, norm


def test_each_tap_equals_a_hand_computation_and_they_differ(parts):
    tokenizer, text_encoder, template = parts
    drop, states, pre, post, norm = _by_hand(tokenizer, text_encoder, template)
    got = {tap: encode_prompts(tokenizer, text_encoder, template, [PROMPT], tap=tap).embeds[0]
           for tap in ("post_norm", "pre_norm", "-2", "-3")}
    assert torch.equal(got["post_norm"], states[-1][0, drop:])
    assert torch.equal(states[-1], post)  # transformers 5 records hidden_states[-1] after the final norm
    assert torch.equal(got["pre_norm"], pre[0, drop:])
    assert torch.allclose(norm(got["pre_norm"]), got["post_norm"], atol=1e-6)  # the norm is the only difference
    assert torch.equal(got["-2"], states[-2][0, drop:]) and torch.equal(got["-3"], states[-3][0, drop:])
    rel = (got["pre_norm"] - got["post_norm"]).norm() / got["post_norm"].norm()
    assert rel > 0.1, rel  # not a rounding difference: the DiT sees another signal
    assert not torch.equal(got["-2"], got["pre_norm"])


def test_a_tap_deeper_than_the_encoder_names_the_range(parts):
    tokenizer, text_encoder, template = parts
    n = text_encoder.config.text_config.num_hidden_layers + 1
    with pytest.raises(InputError, match=rf"encoder_tap=-{n + 1}: this text encoder records {n} hidden states .* use -2..-{n}"):
        encode_prompts(tokenizer, text_encoder, template, [PROMPT], tap=f"-{n + 1}")


@pytest.mark.parametrize("value", ["-1", "0", "last", "pre-norm", "-1.5", "2"])
def test_bad_tap_values_are_refused_at_config_time(value):
    with pytest.raises(ConfigError, match=rf"encoder_tap='{value}': expected post_norm .* pre_norm .* -k with k >= 2"):
        to_run_config(compose([f"encoder_tap={value}"]))


def test_the_tap_reaches_the_run_and_the_record(tmp_path):
    import json

    from workbench.pipeline import Workbench
    from workbench.run import run

    images = {}
    for tap in ("post_norm", "pre_norm"):
        overrides = ["model=tiny_random", "sampler.steps=2", "height=64", "width=64", f"encoder_tap={tap}"]
        cfg = to_run_config(compose(overrides))
        images[tap] = Workbench.from_config(cfg).generate(cfg, progress=False)[0].latents
        record = json.loads(run(compose(overrides), tmp_path / tap, progress=False).read_text())
        assert record["config"]["encoder_tap"] == tap and "transformers" in record["versions"]
    assert not torch.equal(images["post_norm"], images["pre_norm"])  # a new conditioning, not a cached one

"""Fuzzing the Hydra config loading (mamba_seq.cli.compose, called read-only): random override
strings (typos of real keys, real keys with bad values, unknown groups and options, +/~ prefixes,
grammar junk) compose to a config, or end in SystemExit("mamba-seq: config error: ...") whose
message names the override's key (or quotes the override). Nothing else.

Composition costs ~0.1 s, so these tests run fewer examples than the profile's max_examples:
ci profile: 25 + 25 + 25 examples (3 property tests -> 75 composes, ~10 s); long: 500 each."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st
from omegaconf import DictConfig, OmegaConf

from mamba_seq.cli import compose

from .conftest import time_limit

N = 25 if settings().max_examples <= 50 else 500
few = settings(max_examples=N)


def _keys(cfg, prefix=""):
    """Dotted keys of the leaves, interpolations left unresolved."""
    if isinstance(cfg, DictConfig):
        cfg = OmegaConf.to_container(cfg, resolve=False)
    for k, v in cfg.items():
        if isinstance(v, dict):
            yield from _keys(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}"


BASE = compose([])
KEYS = sorted(_keys(BASE))
GROUPS = ["model", "data", "task", "trainer", "callbacks", "logger", "paths", "experiment"]
VALUES = st.one_of(
    st.sampled_from(["1", "-1", "0.5", "abc", "null", "true", "[1,2]", "{a: 1}", "''", "'x y'", "${seed}",
                     "${nope}", "${asset:nope}", "[", "}", "'", "\"", "=", ",", "1e-3", "nan", "inf", "~", "\\"]),
    st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=8),
)


@st.composite
def typo(draw, word):
    kind = draw(st.sampled_from(["delete", "insert", "swap", "replace", "case", "none"]))
    if len(word) < 2 or kind == "none":
        return word
    i = draw(st.integers(0, len(word) - 2))
    c = draw(st.sampled_from("abcdefghijklmnopqrstuvwxyz_.0"))
    if kind == "delete":
        return word[:i] + word[i + 1 :]
    if kind == "insert":
        return word[:i] + c + word[i:]
    if kind == "swap":
        return word[:i] + word[i + 1] + word[i] + word[i + 2 :]
    if kind == "replace":
        return word[:i] + c + word[i + 1 :]
    return word.upper()


@st.composite
def override(draw):
    kind = draw(st.sampled_from(["key", "group", "prefixed", "junk"]))
    if kind == "key":
        key = draw(typo(draw(st.sampled_from(KEYS))))
        return key, f"{key}={draw(VALUES)}"
    if kind == "group":
        group = draw(typo(draw(st.sampled_from(GROUPS))))
        option = draw(st.one_of(st.sampled_from(["mamba_small", "fasta", "cpu", "gpu", "csv", "dna_pretrain",
                                                 "speech_digits", "nope", "null"]),
                                st.text("abcdefghijklmnopqrstuvwxyz_/", min_size=1, max_size=10)))
        return group, f"{group}={option}"
    if kind == "prefixed":
        key = draw(typo(draw(st.sampled_from(KEYS + GROUPS))))
        prefix = draw(st.sampled_from(["+", "++", "~"]))
        return key, f"{prefix}{key}" + ("" if prefix == "~" and draw(st.booleans()) else f"={draw(VALUES)}")
    text = draw(st.text(st.characters(min_codepoint=32, max_codepoint=126), min_size=1, max_size=16))
    return text.split("=")[0].lstrip("+~"), text


def _names_it(msg: str, overrides) -> bool:
    # an empty key (e.g. the override '~') is named as '' ("Could not delete ''")
    return any((k.strip() in msg if k.strip() else "''" in msg) or o in msg for k, o in overrides)


def check(overrides: list[tuple[str, str]]):
    strings = [o for _, o in overrides]
    try:
        with time_limit():
            cfg = compose(strings)
    except SystemExit as err:
        msg = str(err.code)
        assert msg.startswith("mamba-seq: config error: "), msg
        assert _names_it(msg, overrides), (strings, msg)
        return None
    assert isinstance(cfg, DictConfig)
    return cfg


@few
@given(override())
def test_one_override(o):
    check([o])


@few
@given(st.lists(override(), min_size=2, max_size=4))
def test_several_overrides(os_):
    check(os_)


@few
@given(st.sampled_from(KEYS), VALUES)
def test_real_key_any_value(key, value):
    """A real key with any value: composes (types are checked when instantiated), or a config error
    naming the key or quoting the override."""
    cfg = check([(key, f"{key}={value}")])
    if cfg is not None:
        node = OmegaConf.to_container(cfg, resolve=False)
        for part in key.split("."):
            assert isinstance(node, dict) and part in node, (key, value)
            node = node[part]


# -- regressions: Hydra errors that compose() used to pass on without naming the override ------------


def test_empty_key_override_is_a_config_error():
    """Hydra's own ValueError ('Config group override must be a string or a list. Got int') was
    passed on unconverted, naming nothing; compose() now names the overrides."""
    with pytest.raises(SystemExit, match="config error"):
        compose(["=3"])


def test_grammar_error_names_the_override():
    """found by test_one_override: 'callbacks.lr_monitor._target_=[' gave only "no viable
    alternative at input '['"."""
    with pytest.raises(SystemExit, match=r"lr_monitor"):
        compose(["callbacks.lr_monitor._target_=["])

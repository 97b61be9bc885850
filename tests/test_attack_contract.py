"""The contract every registered attack keeps (docs/architecture.md, "Adding an attack").

Parametrised over :data:`tfrobust.attack_specs.SPECS` and the evaluation registry: a new
attack is tested here by being registered. Each runs with its spec's ``quick`` settings.
"""

import inspect
import re

import keras
import numpy as np
import pytest
import tensorflow as tf

from helpers import SHAPE, small_cnn
from tfrobust import attacks, training
from tfrobust import objectives as O
from tfrobust.attack_specs import (CONFIG_DEFAULTS, EVAL_ATTACK_REGISTRY, KNOBS, SPECS, Budget,
                                   attack_spec)
from tfrobust.names import NORMS

BY_NORM = [(s.name, norm) for s in SPECS for norm in s.norms]
EPS = {"linf": 0.3, "l2": 1.5}

BAD = {"eps": -0.1, "steps": -1, "step_size": -0.5, "norm": "l3", "loss": "hinge", "random_start": "yes",
       "targeted": 1, "target_rank": 1, "init_std": -1.0}
"""A bad value of every config field."""

OTHER = {"steps": 3, "step_size": 0.1, "loss": "dlr", "random_start": True, "targeted": True, "target_rank": 2,
         "init_std": 0.01}
"""A valid value away from the default of every field some attack does not read."""


def config(name, **fields):
    return attacks.AttackConfig(name=name, **{**attack_spec(name).quick, **fields})


def inputs(n=16, seed=0):
    x = np.random.default_rng(seed).uniform(0, 1, size=(n, *SHAPE)).astype("float32")
    x[:4], x[4:8] = 0.0, 1.0  # on the clip boundary
    return x


def sizes(delta, norm):
    flat = delta.reshape(len(delta), -1)
    return np.abs(flat).max(1) if norm == "linf" else np.linalg.norm(flat, axis=1)


def randomised(spec):
    return spec.random_start or any(e.randomised for e in spec.evaluations)


@pytest.fixture(scope="module")
def model():
    return small_cnn(seed=0)


def test_every_field_has_examples_and_every_spec_names_real_arguments():
    assert set(BAD) == set(CONFIG_DEFAULTS)
    assert set(OTHER) >= {f for f in CONFIG_DEFAULTS if any(f not in s.fields for s in SPECS)}
    assert len({s.name for s in SPECS}) == len(SPECS)
    for spec in SPECS:
        params = inspect.signature(spec.fn).parameters
        forwards = any(p.kind is p.VAR_KEYWORD for p in params.values())  # bim, cw: **kwargs to pgd
        assert forwards or {arg for arg, _ in spec.arguments} <= set(params), spec.name
        assert set(spec.quick) <= set(spec.fields), spec.name
        assert all(hasattr(attacks.AttackConfig, src) or src in CONFIG_DEFAULTS for _, src in spec.arguments)
        assert ("eps" in params) != spec.minimal, spec.name
        assert attacks.get_attack(spec.name) is spec.fn and attacks.ATTACKS[spec.name] is spec.fn


@pytest.mark.parametrize("name,norm", BY_NORM)
@pytest.mark.parametrize("graph", [False, True])
def test_stays_in_the_ball_and_the_clip_range_and_keeps_shape_and_dtype(model, name, norm, graph):
    x = inputs()
    attack = config(name, eps=EPS[norm], norm=norm)
    fn = tf.function(lambda t: attack(model, t)) if graph else (lambda t: attack(model, t))
    x_adv = fn(tf.constant(x))
    assert x_adv.shape == x.shape and x_adv.dtype == tf.float32
    x_adv = x_adv.numpy()
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    size = sizes(x_adv - x, norm)
    assert (size <= EPS[norm] + 1e-5).all()
    assert size.max() > 0.01  # it did move


@pytest.mark.parametrize("name", [s.name for s in SPECS])
def test_float64_and_a_custom_clip_range_carry_no_gradient(name):
    model = keras.Sequential([keras.Input(SHAPE, dtype="float64"), keras.layers.Flatten(dtype="float64"),
                              keras.layers.Dense(10, dtype="float64")])
    x = tf.constant(np.random.default_rng(3).uniform(0, 255, size=(4, *SHAPE)))
    attack = config(name, eps=8.0, **({"step_size": 4.0} if "step_size" in attack_spec(name).fields else {}))
    with tf.GradientTape() as tape:
        tape.watch(x)
        x_adv = attack(model, x, clip=(0.0, 255.0))
        total = tf.reduce_sum(x_adv)
    assert tape.gradient(total, x) is None
    assert x_adv.dtype == tf.float64
    x_adv = x_adv.numpy()
    assert x_adv.min() >= 0 and x_adv.max() <= 255 and np.abs(x_adv - x.numpy()).max() <= 8.0 + 1e-9


@pytest.mark.parametrize("name,norm", BY_NORM)
def test_eps_zero_is_the_identity(model, name, norm):
    x = inputs(8, seed=2)
    spec = attack_spec(name)
    start = {"random_start": True} if "random_start" in spec.fields else {}
    np.testing.assert_array_equal(config(name, eps=0.0, norm=norm, **start)(model, x).numpy(), x)
    if spec.minimal:  # its own equivalent: a misclassified input is at distance 0, returned as it is
        wrong = (model(x).numpy().argmax(-1) + 1) % 10
        x_min, distance = config(name, norm=norm).minimal(model, x, wrong)
        np.testing.assert_array_equal(distance.numpy(), 0.0)
        np.testing.assert_array_equal(x_min.numpy(), x)


@pytest.mark.parametrize("name", [s.name for s in SPECS])
def test_deterministic_under_a_seed(model, name):
    x = inputs(8, seed=4)
    attack = config(name)
    runs = []
    for seed in (7, 7, 8):
        tf.random.set_seed(seed)
        runs.append(attack(model, x).numpy())
    np.testing.assert_array_equal(runs[0], runs[1])
    if randomised(attack_spec(name)):
        assert not np.array_equal(runs[0], runs[2])  # the seed matters
    else:
        np.testing.assert_array_equal(runs[0], runs[2])


@pytest.mark.parametrize("name", [s.name for s in SPECS])
def test_refuses_bad_fields_naming_the_value(name):
    spec = attack_spec(name)
    for field in spec.fields:
        with pytest.raises(ValueError, match=re.escape(f"{field}={BAD[field]!r}")):
            attacks.AttackConfig(name=name, **{field: BAD[field]})
    for field in set(CONFIG_DEFAULTS) - set(spec.fields):
        with pytest.raises(ValueError, match=re.escape(f"{field}={OTHER[field]!r}: {name} does not take")):
            attacks.AttackConfig(name=name, **{field: OTHER[field]})
    for norm in set(NORMS) - set(spec.norms):
        with pytest.raises(ValueError, match=re.escape(f"norm={norm!r}: {name} supports only")):
            attacks.AttackConfig(name=name, norm=norm)


@pytest.mark.parametrize("name", [s.name for s in SPECS])
def test_the_dict_of_a_config_parses_back_and_uses_are_enforced(name):
    attack = config(name)
    assert attacks.as_attack(attack.to_dict()) == attack
    assert set(attack.to_dict()) == {"name", *attack_spec(name).fields}
    with pytest.raises(ValueError, match="'no_such_field'"):
        attacks.as_attack({"name": name, "no_such_field": 1})
    for use in ("training", "evaluation"):
        if use in attack_spec(name).uses:
            assert attacks.as_attack(attack, use=use) is attack
        else:
            with pytest.raises(ValueError, match=f"{name!r} is not a {use} attack"):
                attacks.as_attack(attack, use=use)


QUICK = Budget(**{k.name: 2 if k.per_class else 5 for k in KNOBS})


@pytest.mark.parametrize("entry", list(EVAL_ATTACK_REGISTRY))
def test_every_evaluation_entry_stays_in_the_ball(model, entry):
    norm = "linf"
    x = inputs(8, seed=5)
    configs = EVAL_ATTACK_REGISTRY[entry].configs(0.2, QUICK)
    assert configs and all(c.name == EVAL_ATTACK_REGISTRY[entry].attack for c in configs)
    for attack in configs:
        x_adv = attack(model, x).numpy()
        assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0 and (sizes(x_adv - x, norm) <= 0.2 + 1e-5).all()
    settings = EVAL_ATTACK_REGISTRY[entry].settings(QUICK)
    assert settings["norm"] == norm and settings["loss"] == configs[0].resolved_loss


def test_kl_pgd_is_accepted_wherever_an_attack_dict_is():
    """One dict -> attack for objectives, the monitor and the recipe check (kl_pgd was refused by the last)."""
    fields = {"name": "kl_pgd", "eps": 0.3, "steps": 5, "step_size": 0.15, "init_std": 0.001}
    assert attacks.as_attack(fields) == O.KLAttack(eps=0.3, steps=5, step_size=0.15)
    assert O.AdversarialTraining(fields).attack == attacks.as_attack(fields)
    recipe = training.load_config("digits_tiny")
    recipe["monitor"] = {"attacks": {"kl": fields, "sq": {"name": "square", "eps": 0.1, "steps": 10}}}
    recipe["keep_best"] = "val_robust_accuracy_kl"
    training.validate_config(recipe)
    recipe["monitor"]["attacks"]["bad"] = {"name": "kl_pgd", "loss": "dlr"}
    with pytest.raises(ValueError, match="monitor attack 'bad': loss='dlr': kl_pgd does not take loss"):
        training.validate_config(recipe)
    with pytest.raises(ValueError, match="'square' is not a training attack"):
        O.AdversarialTraining({"name": "square", "eps": 0.1})

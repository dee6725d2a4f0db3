"""QuantSpec: validation, key-bound λ, JSON round trip."""
from __future__ import annotations

import json

import pytest

from matq_compile.config import QuantSpec


def test_defaults_follow_the_reference():
    spec = QuantSpec()
    assert (spec.method, spec.bits, spec.group_size, spec.sym, spec.slice_rule) == ("matgptq", 8, 64, True, "round")
    assert spec.trained_bits == (8, 4, 3) and spec.native_bits == 8 and spec.train_set == (8, 4, 3)
    assert [spec.lambda_of(r) for r in (8, 4, 3)] == [1.0, 1.0, 1.0]
    assert [spec.mu_of(r) for r in (8, 4, 3)] == [1 / 3] * 3


def test_lambdas_are_bound_by_key_not_position():
    a = QuantSpec(trained_bits=(3, 8, 4), lambdas=((3, 2.0), (8, 1.0)))
    b = QuantSpec(trained_bits=(8, 4, 3), lambdas={8: 1.0, 3: 2.0})
    assert a == b and a.trained_bits == (8, 4, 3)
    assert (a.lambda_of(3), a.lambda_of(4), a.lambda_of(8)) == (2.0, 1.0, 1.0)
    mu = QuantSpec(lambdas={3: 2.0}, mu="lambda")
    assert mu.mu_of(3) == 0.5 and mu.mu_of(8) == 0.25
    with pytest.raises(ValueError, match="not a trained slice"):
        a.lambda_of(2)


def test_gptq_native_bits_and_train_set():
    spec = QuantSpec(method="gptq", bits=4)
    assert spec.native_bits == 4 and spec.train_set == (8,)
    assert QuantSpec(method="rtn").native_bits == 8


def test_dict_round_trip_is_json_safe():
    spec = QuantSpec(method="matgptq", trained_bits=(8, 4, 2), lambdas={2: 0.5}, group_size=-1, sym=False,
                     slice_rule="midpoint", act_order=True, levels=(8, 2, 4))
    d = json.loads(json.dumps(spec.to_dict()))
    assert QuantSpec.from_dict(d) == spec
    with pytest.raises(ValueError, match="unknown quant spec fields"):
        QuantSpec.from_dict({**d, "bogus": 1})


def test_group_checks():
    spec = QuantSpec(group_size=96, block_size=128)
    assert spec.group_for(576) == 96 and spec.block_for(576) == 192  # groups never straddle lazy blocks
    assert QuantSpec(group_size=-1).group_for(576) == 576
    with pytest.raises(ValueError, match="group size 100 does not divide in_features 576"):
        QuantSpec(group_size=100).check_group(576)


@pytest.mark.parametrize("kwargs", [dict(rel_damp=-1.0), dict(block_size=0), dict(mu="median"),
                                    dict(lambdas={8: -1.0}), dict(lambdas={8: 0.0}), dict(sym=1),
                                    dict(levels=()), dict(trained_bits=(8, 8, 4))])
def test_invalid_fields(kwargs):
    with pytest.raises(ValueError):
        QuantSpec(**kwargs)

"""Every deep method checks its own constructor arguments: one InputError line naming the argument."""

import pytest

from hashlearn.errors import InputError
from hashlearn.methods import get_method

BAD = [
    ("dpsh", {"bits": 0}, "bits"),
    ("dpsh", {"bits": True}, "bits"),
    ("dpsh", {"bits": 2.5}, "bits"),
    ("dpsh", {"eta": -1}, "eta"),
    ("dpsh", {"eta": "much"}, "eta"),
    ("dpsh", {"eta": float("nan")}, "eta"),
    ("dpsh", {"pairs": "some"}, "pairs"),
    ("dpsh", {"memory_size": -1}, "memory_size"),
    ("dpsh", {"memory_size": 64}, "memory_size"),  # only with pairs='memory'
    ("dpsh", {"pairs": "memory"}, "memory_size"),  # which needs a size
    ("dpsh", {"activation": "relu"}, "activation"),
    ("dpsh", {"tap": 3}, "tap"),
    ("dmsh", {"mid_channels": 0}, "mid_channels"),
    ("dmsh", {"mid_channels": 2.5}, "mid_channels"),
    ("dmsh", {"mid_channels": "8"}, "mid_channels"),
    ("dmsh", {"deep_supervision": -0.1}, "deep_supervision"),
    ("dmsh", {"focal_gamma": -2}, "focal_gamma"),
    ("dmsh", {"eta": None}, "eta"),
    ("dmsh", {"balance": "yes"}, "balance"),
    ("dmsh", {"taps": "stage3"}, "taps"),
    ("dmsh", {"taps": []}, "taps"),
    ("dmsh", {"fusion": "max"}, "fusion"),
    ("dmsh", {"scale_head": "attention"}, "scale_head"),
    ("dmsh", {"normalize": "zscore"}, "normalize"),
    ("dmsh", {"pairs": "everything"}, "pairs"),
]


@pytest.mark.parametrize(("name", "args", "argument"), BAD, ids=[f"{n}-{a}" for n, _, a in BAD])
def test_a_bad_argument_is_one_line_naming_it(name, args, argument):
    args = {"bits": 8, **args}
    with pytest.raises(InputError, match=rf"^{name}: {argument} ") as exc:
        get_method(name)(**args)
    assert "\n" not in str(exc.value)


def test_yaml_spellings_of_good_values_are_accepted():
    m = get_method("dmsh")(bits=8.0, eta="1e-3", mid_channels=8.0, deep_supervision=0, taps=("s1", "s2"))
    assert (m.bits, m.eta, m.mid_channels, m.deep_supervision, m.tap_names) == (8, 0.001, 8, 0.0, ["s1", "s2"])
    assert isinstance(m.bits, int) and isinstance(m.mid_channels, int)
    d = get_method("dpsh")(bits=12, pairs="memory", memory_size=256)
    assert d.hparams() == {"bits": 12, "pairs": "memory", "memory_size": 256, "eta": 0.1, "activation": "none",
                           "tap": None, "head": "linear", "mid_channels": 256}

"""Binary codes: sign convention, {0,1} ⇄ ±1, packing bit order, Hamming distance, files."""

import numpy as np
import pytest

from hashlearn.codes import (
    as_bits,
    as_packed,
    hamming_distances,
    load_codes,
    pack_bits,
    packed_nbytes,
    save_codes,
    sign,
    to_01,
    to_pm1,
    unpack_bits,
)
from hashlearn.errors import InputError, NotFoundError


def test_sign_of_zero_is_plus_one():
    assert sign(np.array([-2.0, -0.0, 0.0, 1e-9, 3.0])).tolist() == [-1, 1, 1, 1, 1]
    assert sign(np.array([0.0])).dtype == np.int8


def test_sign_rejects_nan():
    with pytest.raises(InputError, match="NaN"):
        sign(np.array([0.0, np.nan]))


def test_01_and_pm1_round_trip():
    pm = np.array([[1, -1, -1, 1]])
    assert to_01(pm).tolist() == [[1, 0, 0, 1]]
    assert to_pm1(to_01(pm)).tolist() == pm.tolist()
    assert to_pm1(np.array([[True, False]])).tolist() == [[1, -1]]


def test_pack_bit_order_is_msb_first_and_padded_with_zeros():
    bits = np.array([[1, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0]])  # 11 bits -> 2 bytes
    packed = pack_bits(bits)
    assert packed.dtype == np.uint8
    assert packed.tolist() == [[0b10000000, 0b11000000]]
    assert packed_nbytes(11) == 2
    assert unpack_bits(packed, 11).tolist() == bits.tolist()


@pytest.mark.parametrize("n_bits", [1, 7, 8, 12, 63, 64, 65, 130])
def test_pack_unpack_round_trip_any_length(n_bits):
    rng = np.random.default_rng(n_bits)
    bits = rng.integers(0, 2, (5, n_bits), dtype=np.uint8)
    assert np.array_equal(unpack_bits(pack_bits(bits), n_bits), bits)
    assert np.array_equal(unpack_bits(pack_bits(2 * bits.astype(int) - 1), n_bits), bits)


@pytest.mark.parametrize("bad, message", [
    (np.array([[0, 1, 2]]), "binary"),
    (np.array([[0.5, 1.0]]), "binary"),
    (np.array([[0, -1, 1]]), "binary"),
    (np.array([[np.nan, 1.0]]), "NaN"),
    (np.array([0, 1]), "2-D"),
    (np.array([["a", "b"]]), "dtype"),
])
def test_non_binary_values_are_rejected_with_their_name(bad, message):
    with pytest.raises(InputError, match=message) as info:
        as_bits(bad, name="query codes")
    assert "query codes" in str(info.value)


def test_as_packed_accepts_packed_with_bits_and_checks_width_and_padding():
    bits = np.random.default_rng(0).integers(0, 2, (4, 12))
    packed = pack_bits(bits)
    same, n = as_packed(packed, bits=12)
    assert n == 12 and np.array_equal(same, packed)
    assert as_packed(bits)[1] == 12
    with pytest.raises(InputError, match="matches neither"):
        as_packed(packed, bits=64)
    dirty = packed.copy()
    dirty[0, -1] |= 1  # a padding bit set: the codes were not 12-bit codes
    with pytest.raises(InputError, match="padding"):
        as_packed(dirty, bits=12)


def test_hamming_distances_match_brute_force():
    rng = np.random.default_rng(1)
    q = rng.integers(0, 2, (7, 77))
    d = rng.integers(0, 2, (13, 77))
    expected = (q[:, None, :] != d[None, :, :]).sum(-1)
    assert np.array_equal(hamming_distances(pack_bits(q), pack_bits(d)), expected)


def test_hamming_distances_reject_length_mismatch():
    with pytest.raises(InputError, match="mismatch"):
        hamming_distances(np.zeros((1, 8), np.uint8), np.zeros((1, 4), np.uint8))


def test_save_and_load_codes_keep_ids(tmp_path):
    bits = np.random.default_rng(2).integers(0, 2, (3, 20))
    ids = np.array(["a.jpg", "b.jpg", "c.jpg"])
    path = save_codes(tmp_path / "codes.npz", bits, bits=20, ids=ids)
    loaded = load_codes(path)
    assert loaded.bits == 20 and len(loaded) == 3
    assert loaded.ids.tolist() == ids.tolist()
    assert np.array_equal(loaded.unpacked(), bits)


def test_load_codes_errors_name_the_file(tmp_path):
    with pytest.raises(NotFoundError, match="missing.npz"):
        load_codes(tmp_path / "missing.npz")
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(InputError, match="other.npz"):
        load_codes(tmp_path / "other.npz")


def test_the_format_comes_from_dtype_shape_and_bits_never_from_values():
    rng = np.random.default_rng(5)
    zero_one_bytes = rng.integers(0, 2, (4, 8)).astype(np.uint8)  # could be 64-bit packed or 8-bit 0/1
    with pytest.raises(InputError, match="ambiguous: pass bits=64 .* or bits=8"):
        as_packed(zero_one_bytes)
    packed, n = as_packed(zero_one_bytes, bits=64)
    assert n == 64 and np.array_equal(packed, zero_one_bytes)
    packed, n = as_packed(zero_one_bytes, bits=8)
    assert n == 8 and np.array_equal(packed, pack_bits(zero_one_bytes.astype(bool)))
    # int8 / bool / int / float arrays are unpacked values, with or without bits (unchanged API)
    pm = (zero_one_bytes.astype(np.int8) * 2 - 1)
    for arr in (pm, zero_one_bytes.astype(bool), pm.astype(np.int64), pm.astype(np.float32)):
        assert as_packed(arr)[1] == 8 and as_packed(arr, bits=8)[1] == 8
    with pytest.raises(InputError, match="packed codes must be uint8, got int8"):
        as_packed(pm, bits=64)
    with pytest.raises(InputError, match="int8 codes are unpacked .* width 8 is not 12 bits"):
        as_packed(pm, bits=12)
    with pytest.raises(InputError, match="no bits"):
        as_packed(np.zeros((3, 0), np.int8))


def test_load_codes_reads_npy_by_the_same_rule(tmp_path):
    from hashlearn.codes.binary import codes_from_array

    rng = np.random.default_rng(6)
    zero_one_bytes = rng.integers(0, 2, (5, 8)).astype(np.uint8)
    np.save(tmp_path / "packed.npy", zero_one_bytes)
    loaded = load_codes(tmp_path / "packed.npy")
    assert loaded.bits == 64 and np.array_equal(loaded.packed, zero_one_bytes)
    assert loaded.ids.tolist() == [0, 1, 2, 3, 4]
    assert load_codes(tmp_path / "packed.npy", bits=8).bits == 8  # bits = columns: 0/1 values
    with pytest.raises(InputError, match="padding bits past bit 60"):  # packed, 60 bits in 8 bytes: checked
        load_codes(tmp_path / "packed.npy", bits=60)
    np.save(tmp_path / "pm.npy", zero_one_bytes.astype(np.int8) * 2 - 1)
    assert load_codes(tmp_path / "pm.npy").bits == 8
    assert codes_from_array(zero_one_bytes)[1] == 64
    save_codes(tmp_path / "c40.npz", rng.integers(0, 2, (3, 40)), 40)
    with pytest.raises(InputError, match="c40.npz holds 40-bit codes, not 32"):
        load_codes(tmp_path / "c40.npz", bits=32)
    (tmp_path / "dir.npz").mkdir()
    with pytest.raises(InputError, match="folder"):
        load_codes(tmp_path / "dir.npz")
    (tmp_path / "trunc.npz").write_bytes((tmp_path / "c40.npz").read_bytes()[:50])
    with pytest.raises(InputError, match="trunc.npz"):
        load_codes(tmp_path / "trunc.npz")

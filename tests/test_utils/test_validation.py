"""sfc_plugin.utils.validation: what passes as an integer or a real number,
and the messages that name the setting."""
import numpy as np
import pytest
import torch

from sfc_plugin.utils.validation import (
    check_integer,
    check_real,
    decimal_digits,
    shown,
)


@pytest.mark.parametrize('value', [3, np.int64(3), np.uint8(3),
                                   torch.tensor(3)])
def test_integers_pass_as_int(value):
    got = check_integer('owner', 'k', value, low=1, high=3)
    assert got == 3 and type(got) is int


@pytest.mark.parametrize('value', [True, np.bool_(True), torch.tensor(True),
                                   3.0, 2.7, float('nan'), '3', None,
                                   torch.tensor([3, 4]), torch.tensor(3.0)])
def test_anything_else_is_named(value):
    with pytest.raises(ValueError, match=r'^owner: k must be an integer, '
                       r'got .* \(\w+\)$'):
        check_integer('owner', 'k', value)


@pytest.mark.parametrize('low, high, value, bound', [
    (1, None, 0, '>= 1'),
    (None, 5, 6, '<= 5'),
    (1, 255, 256, 'in [1, 255]'),
])
def test_bounds_are_said_with_why(low, high, value, bound):
    with pytest.raises(ValueError) as err:
        check_integer('owner', 'k', value, low, high, ' (a reason)')
    assert str(err.value) == f'owner: k must be {bound} (a reason), got ' \
        f'{value}'


def test_the_error_type_is_the_callers():

    class ExportError(RuntimeError):
        pass

    with pytest.raises(ExportError, match='export: opset must be >= 17'):
        check_integer('export', 'opset', 13, low=17, error=ExportError)
    with pytest.raises(ExportError, match='must be an integer'):
        check_integer('export', 'opset', 'x', error=ExportError)


@pytest.mark.parametrize('value, expected', [
    (2, 2.0), (0.5, 0.5), (np.float32(0.25), 0.25), (float('inf'),
                                                      float('inf')),
    (torch.tensor(0.5), 0.5), (torch.tensor(2), 2.0)])
def test_reals_pass_as_float(value, expected):
    got = check_real('owner', 'r', value)
    assert got == expected and type(got) is float


@pytest.mark.parametrize('value', [True, '0.5', None, [0.5],
                                   torch.tensor([0.5]), torch.tensor(1j),
                                   torch.tensor(True), 1j])
def test_non_reals_are_named(value):
    with pytest.raises(ValueError, match=r'^owner: r must be a real number, '
                       r'got '):
        check_real('owner', 'r', value)


@pytest.mark.parametrize('number', [0, 7, 9, 10, 99, 100, 10**38 - 1, 10**38,
                                    -10**38, 2**4000, 10**4299,
                                    10**4299 - 1],
                         ids=lambda n: f'{decimal_digits(n)} digits')
def test_decimal_digits_counts_what_str_prints(number):
    assert decimal_digits(number) == len(str(abs(number)))


def test_decimal_digits_beyond_what_str_prints():
    """str() refuses integers above 4300 digits: they are counted all the
    same, exactly."""
    assert decimal_digits(10**5000) == 5001
    assert decimal_digits(10**5000 - 1) == 5000
    assert decimal_digits(-(10**12345)) == 12346


@pytest.mark.parametrize('value, expected', [
    (10**37, str(10**37)),
    (10**38, 'an integer of 39 digits'),
    (-10**5000, 'an integer of 5001 digits'),
    (np.int64(5), 'np.int64(5)'),
    ('x' * 100, "'" + 'x' * 36 + '...'),
    (True, 'True'),
], ids=['37 digits', '39 digits', '5001 digits', 'np.int64', 'str', 'bool'])
def test_shown_values_fit_a_message(value, expected):
    assert shown(value) == expected


@pytest.mark.parametrize('value, got', [
    (10**5000, 'got an integer of 5001 digits'),
    (2**63, f'got {2**63}'),
    ('9' * 5000, "got '999999999999999999999999999999999999... (str)"),
], ids=['5001 digits', '2**63', 'str'])
def test_huge_values_are_named_in_a_short_message(value, got):
    """No 5000-character messages, and no ValueError from str() itself
    (integers beyond 4300 digits have none) instead of the setting's."""
    with pytest.raises(ValueError) as err:
        check_integer('owner', 'k', value, low=1, high=2**63 - 1)
    assert str(err.value).startswith('owner: k must be ')
    assert str(err.value).endswith(got) and len(str(err.value)) < 120
    if value != 2**63:
        with pytest.raises(ValueError, match=r'^owner: r must be a real '
                           r'number'):
            check_real('owner', 'r', value)

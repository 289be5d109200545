"""Checks of the scalar settings a user gives (config values, arguments):
the value in its type, or an error naming the setting.

Kept below every other module so that datasets, models, the runner and the
tools share one set of rules and messages.
"""
import numbers
import operator
from typing import Optional, Type

import torch

#: Characters of a value a message shows.
SHOWN_CHARS = 40


def decimal_digits(number: int) -> int:
    """Digits of ``abs(number)``, for integers beyond what ``str`` prints
    (4300 digits by default) too."""
    number = abs(number)
    digits = max(1, int(number.bit_length() * 0.30102999566398))
    while 10**digits <= number:
        digits += 1
    while digits > 1 and 10**(digits - 1) > number:
        digits -= 1
    return digits


def shown(value) -> str:
    """``repr(value)`` for a message, cut to :data:`SHOWN_CHARS`; an
    integer longer than that is described by its length (a huge one has no
    ``repr`` at all)."""
    if (isinstance(value, numbers.Integral) and not isinstance(value, bool)
            and decimal_digits(int(value)) > SHOWN_CHARS - 2):
        return f'an integer of {decimal_digits(int(value))} digits'
    text = repr(value)
    return (text if len(text) <= SHOWN_CHARS else
            text[:SHOWN_CHARS - 3] + '...')


def check_integer(owner: str,
                  name: str,
                  value,
                  low: Optional[int] = None,
                  high: Optional[int] = None,
                  why: str = '',
                  error: Type[Exception] = ValueError) -> int:
    """``value`` as an ``int``, or an ``error`` naming ``name``.

    Python and numpy integers and 0-dim integer tensors pass; bool, float
    (even 2.0), str, None and the rest do not: a silent ``int()`` would
    turn 2.7 into 2 and ``True`` into 1.

    Args:
        owner (str): Who checks, the start of the message.
        name (str): The argument's name.
        value: The argument.
        low, high (int, optional): Inclusive bounds, if any.
        why (str): Said after a bound, e.g. ``' (preallocated)'``.
        error (type): The exception raised. Defaults to ValueError.

    Returns:
        int: ``value``.
    """
    # bool is an int to Python, and 0-dim bool tensors have an __index__.
    is_bool = isinstance(value, bool) or str(getattr(
        value, 'dtype', '')) in ('bool', 'torch.bool')
    number = None
    if not is_bool:
        try:
            number = operator.index(value)
        except TypeError:
            pass
    if number is None:
        raise error(
            f'{owner}: {name} must be an integer, got {shown(value)} '
            f'({type(value).__name__})')
    if (low is not None and number < low) or (high is not None
                                              and number > high):
        bound = (f'>= {low}' if high is None else
                 f'<= {high}' if low is None else f'in [{low}, {high}]')
        raise error(f'{owner}: {name} must be {bound}{why}, got '
                    f'{shown(number)}')
    return number


def check_real(owner: str, name: str, value) -> float:
    """``value`` as a ``float``, or a ``ValueError`` naming ``name``.

    Python and numpy reals and 0-dim real tensors pass (their range is
    the caller's to check); bool, str, None and the rest do not.

    Args:
        owner (str): Who checks, the start of the message.
        name (str): The argument's name.
        value: The argument.

    Returns:
        float: ``value``.
    """
    number = value
    if (isinstance(value, torch.Tensor) and value.dim() == 0
            and not value.dtype.is_complex and value.dtype != torch.bool):
        number = value.item()
    if isinstance(number, numbers.Real) and not isinstance(number, bool):
        try:
            return float(number)
        except OverflowError:  # an int beyond float range, e.g. 10**400
            raise ValueError(f'{owner}: {name} must be a real number within '
                             f'float range, got an integer of '
                             f'{decimal_digits(int(number))} digits') from None
    raise ValueError(
        f'{owner}: {name} must be a real number, got {shown(value)} '
        f'({type(value).__name__})')

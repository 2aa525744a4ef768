"""Number formatting for templates (Jinja filters). Pure functions, no I/O.

Templates never format numbers by hand: `{{ x | num }}` gives 2,127,057,600,
`{{ x | sci }}` gives 4.51 × 10¹², `{{ b | mib }}` gives 20.00 MiB's number.
"""

from __future__ import annotations

import math

_SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")


def num(x, digits: int = 0) -> str:
    """Thousands separators: 2127057600 -> '2,127,057,600'; num(3.14159, 2) -> '3.14'."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if digits == 0:
        return f"{round(x):,}"
    return f"{x:,.{digits}f}"


def sci(x, digits: int = 3) -> str:
    """Scientific notation with a real superscript: 4513336524800 -> '4.51 × 10¹²'."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if x == 0:
        return "0"
    exp = math.floor(math.log10(abs(x)))
    mant = x / 10**exp
    if round(mant, digits - 1) >= 10:  # 9.999 rounds up to 10.0
        mant, exp = mant / 10, exp + 1
    return f"{mant:.{digits - 1}f} × 10{str(exp).translate(_SUPERSCRIPT)}"


def sig(x, digits: int = 3) -> str:
    """Significant digits without exponent for moderate numbers: 0.0123456 -> '0.0123'."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if x == 0:
        return "0"
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(x))))
    return f"{x:,.{decimals}f}"


def pct(x, digits: int = 1) -> str:
    """Fraction as a percentage: 0.669 -> '66.9%'."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{100 * x:.{digits}f}%"


def mib(nbytes, digits: int = 2) -> str:
    return num(nbytes / 1024**2, digits)


def gib(nbytes, digits: int = 2) -> str:
    return num(nbytes / 1024**3, digits)


def gb(nbytes, digits: int = 2) -> str:
    """Decimal gigabytes (10⁹ bytes)."""
    return num(nbytes / 1e9, digits)


def ms(seconds_or_ms, digits: int = 2) -> str:
    return num(seconds_or_ms, digits)


def and_join(items) -> str:
    """A list in plain English: [0, 1, 2, 5] -> '0, 1, 2 and 5'; [a, b] -> 'a and b'; [a] -> 'a'."""
    words = [str(x) for x in items]
    return " and ".join([", ".join(words[:-1]), words[-1]]) if len(words) > 1 else "".join(words)


FILTERS = {"num": num, "sci": sci, "sig": sig, "pct": pct, "mib": mib, "gib": gib, "gb": gb, "ms": ms,
           "and_join": and_join}


def clock(seconds) -> str:
    """A duration as a clock reads: 42 -> '0:42', 3723 -> '1:02:03'."""
    from lmreport.progress import clock_text
    if seconds is None or (isinstance(seconds, float) and math.isnan(seconds)):
        return "–"
    return clock_text(seconds)


FILTERS["clock"] = clock

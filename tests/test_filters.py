from lmreport.report.filters import and_join, gib, mib, num, pct, sci, sig


def test_number_filters():
    assert num(2127057600) == "2,127,057,600"
    assert num(3.14159, 2) == "3.14"
    assert sci(4_513_336_524_800) == "4.51 × 10¹²"
    assert sci(9.999e5) == "1.00 × 10⁶"
    assert sci(0.00012, 2) == "1.2 × 10⁻⁴"
    assert pct(0.6691) == "66.9%"
    assert mib(20 * 1024**2) == "20.00" and gib(1024**3, 1) == "1.0"
    assert sig(0.0123456) == "0.0123" and sig(1234.5) == "1,234"
    assert num(float("nan")) == "–"


def test_and_join():
    assert and_join([0, 1, 2, 5]) == "0, 1, 2 and 5"
    assert and_join(["forward", "train"]) == "forward and train"
    assert and_join([5]) == "5" and and_join([]) == ""

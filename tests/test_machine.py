"""vimc.machine: the CPU name that headers print and result files are named after."""

from __future__ import annotations

from vimc.machine import cpu_name_from, machine_tag

ZEN5_VM = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 26
model\t\t: 2
model name\t: AMD EPYC
flags\t\t: fpu avx2 avx512f

processor\t: 1
vendor_id\t: AuthenticAMD
cpu family\t: 26
model\t\t: 2
model name\t: AMD EPYC
"""


def test_a_generic_name_gets_family_and_model():
    assert cpu_name_from(ZEN5_VM) == "AMD EPYC (family 26 model 2)"
    zen4 = ZEN5_VM.replace(": 26", ": 25").replace(": 2\n", ": 17\n")
    assert cpu_name_from(zen4) == "AMD EPYC (family 25 model 17)"
    xeon = "cpu family\t: 6\nmodel\t\t: 143\nmodel name\t: Intel(R) Xeon(R) Processor\n"
    assert cpu_name_from(xeon) == "Intel(R) Xeon(R) Processor (family 6 model 143)"
    clocked = xeon.replace(": 143", ": 106").replace("Processor", "Processor @ 2.60GHz")
    want = "Intel(R) Xeon(R) Processor @ 2.60GHz (family 6 model 106)"
    assert cpu_name_from(clocked) == want


def test_a_name_with_a_model_number_stays_as_it_is():
    named = ZEN5_VM.replace("model name\t: AMD EPYC", "model name\t: AMD EPYC 9B45 128-Core")
    assert cpu_name_from(named) == "AMD EPYC 9B45 128-Core"
    xeon = (
        "cpu family\t: 6\nmodel\t\t: 85\nmodel name\t: Intel(R) Xeon(R) Gold 6148 CPU @ 2.40GHz\n"
    )
    assert cpu_name_from(xeon) == "Intel(R) Xeon(R) Gold 6148 CPU @ 2.40GHz"


def test_no_model_name_gives_none():
    arm = "processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd\nCPU part\t: 0xd0c\n"
    assert cpu_name_from(arm) is None
    assert cpu_name_from("") is None


def test_machine_tag_is_file_name_safe():
    tag = machine_tag()
    assert tag and all(c.isalnum() or c == "-" for c in tag) and tag == tag.lower()
    assert tag.endswith("c")  # the core count closes it

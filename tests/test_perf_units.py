"""The perf engine's parts that need no network: the statistics and the erratic flag, the gates of
perf.toml and their errors, and the measuring tools' parsers, fed outputs recorded from real runs
here (tests/data/perf/README.md says how each was made)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from labkit.errors import LabError, LabInputError
from labkit.perf import cpu, gates, stats, tools
from labkit.perf.campaign import METRICS, Campaign, Cell

DATA = Path(__file__).parent / "data" / "perf"
ROOT = Path(__file__).resolve().parents[1]


def recorded(name: str) -> str:
    return (DATA / name).read_text()


# -- stats -------------------------------------------------------------------------------------


def test_summary_gives_median_min_max_and_population_cv():
    s = stats.summarize([2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0])
    assert (s.median, s.min, s.max) == (4.5, 2.0, 9.0)
    assert s.cv == pytest.approx(2.0 / 5.0)  # population stdev 2, mean 5


def test_summary_of_one_value_has_no_spread():
    s = stats.summarize([3.5])
    assert (s.median, s.min, s.max, s.cv) == (3.5, 3.5, 3.5, 0.0)


def test_summary_of_nothing_is_refused():
    with pytest.raises(ValueError):
        stats.summarize([])


def test_steady_repetitions_are_not_suspect():
    assert stats.spread_why([10.0, 10.5, 9.8, 10.2, 9.9]) == ""
    assert stats.spread_why([7.0]) == ""


def test_max_over_min_above_three_is_suspect_and_names_the_repetitions():
    why = stats.spread_why([1.0, 1.0, 1.0, 1.0, 3.2])
    assert why.startswith("max/min 3.2")
    assert "over reps 1, 1, 1, 1, 3.2" in why


def test_max_over_min_of_exactly_three_is_not_suspect_by_itself():
    # CV of [1, 3] is 50%: use enough steady values that only the spread could flag it.
    values = [2.0] * 40 + [1.0, 3.0]
    assert stats.summarize(values).cv < stats.MAX_CV
    assert stats.spread_why(values) == ""


def test_cv_above_a_quarter_is_suspect_even_within_a_spread_of_three():
    values = [1.0, 1.0, 2.9, 2.9]
    s = stats.summarize(values)
    assert s.max / s.min < stats.MAX_SPREAD and s.cv > stats.MAX_CV
    why = stats.spread_why(values)
    assert "CV" in why and "max/min" not in why


def test_a_repetition_that_measured_nothing_is_suspect():
    assert "measured 0" in stats.spread_why([0.0, 5.0, 5.0])


def test_erratic_only_when_the_re_measurement_disagrees_too():
    suspect = [1.0, 1.0, 9.0]
    assert stats.confirm(suspect, [1.0, 1.1, 0.95]) == ""  # one bad repetition: not erratic
    why = stats.confirm(suspect, [9.0, 1.0, 9.0])
    assert "max/min 9" in why
    assert "over reps 1, 1, 9" in why  # the first repetitions, named
    assert "(confirmed by 3 more: 9, 1, 9)" in why  # and the confirming ones


def test_steady_values_are_not_made_erratic_by_a_noisy_re_measurement():
    assert stats.confirm([5.0, 5.0, 5.0], [1.0, 9.0, 1.0]) == ""


# -- gates -------------------------------------------------------------------------------------

PERF_TOML = """
[[gate]]
stack = "gvisor-nogso"
metric = "tcp_*"
min_ratio = 0.01
why = "software segmentation off: slow on purpose"

[[gate]]
stack = "gvisor*"
metric = "tcp_tx_1"
min_ratio = 0.05

[[gate]]
stack = "*"
metric = "tcp_rr"
min_ratio = 0.1
"""


def parsed(text: str) -> list[gates.Gate]:
    import tomllib

    return gates.parse(tomllib.loads(text), "perf.toml", METRICS)


def test_gates_parse_and_the_first_match_applies():
    found = parsed(PERF_TOML)
    assert [(g.stack, g.metric, g.min_ratio) for g in found] == [
        ("gvisor-nogso", "tcp_*", 0.01),
        ("gvisor*", "tcp_tx_1", 0.05),
        ("*", "tcp_rr", 0.1),
    ]
    assert gates.gate_for(found, "gvisor-nogso", "tcp_tx_1") is found[0]
    assert gates.gate_for(found, "gvisor-ch2", "tcp_tx_1") is found[1]
    assert gates.gate_for(found, "gvisor-ch2", "tcp_rx_1") is None
    assert gates.gate_for(found, "pasta", "tcp_rr") is found[2]
    assert gates.gate_for(found, "gvisor@nightly", "tcp_tx_1") is found[1]  # a build's cell matches by its stack


def test_a_missing_gates_file_has_no_gates(tmp_path):
    assert gates.load(tmp_path / "perf.toml", METRICS) == []


def test_gates_load_from_a_file(tmp_path):
    path = tmp_path / "perf.toml"
    path.write_text(PERF_TOML)
    assert len(gates.load(path, METRICS)) == 3


@pytest.mark.parametrize(
    "text, names",
    [
        ('[[gate]]\nstack = "linux"\nmetric = "tcp_tx_1"\nmin_ratio = 0\n', ["min_ratio = 0", "above 0"]),
        ('[[gate]]\nstack = "linux"\nmetric = "tcp_tx_1"\nmin_ratio = -0.5\n', ["min_ratio = -0.5", "above 0"]),
        ('[[gate]]\nstack = "linux"\nmetric = "tcp_tx_1"\nmin_ratio = "0.5"\n', ["min_ratio = '0.5'", "a number"]),
        ('[[gate]]\nstack = "linux"\nmetric = "tcp_tx_1"\nmin_ratio = true\n', ["min_ratio = True", "a number"]),
        ('[[gate]]\nstack = "linux"\nmetric = "tcp_tx_1"\nmin_ratio = 11\n', ["min_ratio = 11", "at most 10"]),
        ('[[gate]]\nstack = "linux"\nmetric = "tcp_tx_1"\n', ["min_ratio = None", "a number"]),
        ('[[gate]]\nstack = "linux"\nmetric = "tcp_bulk"\nmin_ratio = 0.5\n', ["metric = 'tcp_bulk'", "tcp_tx_1", "a glob"]),
        ('[[gate]]\nstack = "linux"\nmetric = "udp_*x_4"\nmin_ratio = 0.5\n', ["metric = 'udp_*x_4'"]),
        ('[[gate]]\nmetric = "tcp_tx_1"\nmin_ratio = 0.5\n', ["stack = None", "a stack id or glob"]),
        ('[[gate]]\nstack = ""\nmetric = "tcp_tx_1"\nmin_ratio = 0.5\n', ["stack = ''"]),
        (
            '[[gate]]\nstack = "linux"\nmetric = "tcp_tx_1"\nmin_ratio = 0.5\nmax_ratio = 2\n',
            ["'max_ratio'", "allowed: stack, metric"],
        ),
        ('[[gate]]\nstack = "linux"\nmetric = "tcp_tx_1"\nmin_ratio = 0.5\nwhy = 3\n', ["why = 3", "a string"]),
        ('[[gates]]\nstack = "linux"\n', ["'gates'", "[[gate]]"]),
        ('gate = "linux"\n', ["'gate' is str", "array of tables"]),
        ('gate = ["linux"]\n', ["'linux'", "a table with"]),
    ],
    ids=[
        "ratio-zero",
        "ratio-negative",
        "ratio-string",
        "ratio-bool",
        "ratio-too-large",
        "ratio-missing",
        "metric-unknown",
        "metric-glob-matching-nothing",
        "stack-missing",
        "stack-empty",
        "key-unknown",
        "why-not-text",
        "table-unknown",
        "gate-not-array",
        "entry-not-table",
    ],
)
def test_bad_gates_are_refused_in_one_line_naming_the_value_and_what_is_allowed(text, names):
    with pytest.raises(LabInputError) as caught:
        parsed(text)
    message = str(caught.value)
    assert "\n" not in message
    assert "allowed" in message
    for name in names:
        assert name in message
    if "gate #" in message:
        assert message.startswith("perf.toml gate #1")  # which entry


def test_a_gates_file_that_is_not_toml_is_refused_in_one_line(tmp_path):
    path = tmp_path / "perf.toml"
    path.write_text('[[gate]]\nstack = "linux\n')
    with pytest.raises(LabInputError) as caught:
        gates.load(path, METRICS)
    assert str(path) in str(caught.value) and "not TOML" in str(caught.value)
    assert "\n" not in str(caught.value)


def test_the_shipped_perf_toml_loads():
    path = ROOT / "suites" / "perf.toml"
    if not path.exists():
        pytest.skip("suites/perf.toml not written yet")
    found = gates.load(path, METRICS)
    assert found, "suites/perf.toml has no gates"
    assert all(0 < g.min_ratio <= 1 for g in found), "a gate above 1 asks a stack to beat the kernel"


def test_a_ratio_is_one_for_as_good_as_linux_and_lower_for_worse_whichever_way_a_metric_goes():
    campaign = Campaign([], metrics=["tcp_tx_1", "tcp_rr"], gates=parsed(PERF_TOML))
    rows = campaign._shape(
        [
            Cell("linux", METRICS["tcp_tx_1"], 1500, values=[4.0, 4.0, 4.0]),
            Cell("gvisor", METRICS["tcp_tx_1"], 1500, values=[1.0, 1.0, 1.0]),
            Cell("linux", METRICS["tcp_rr"], 1500, values=[20.0, 20.0, 20.0]),  # usec: lower is better
            Cell("gvisor", METRICS["tcp_rr"], 1500, values=[400.0, 400.0, 400.0]),
        ]
    )
    ratio = {(r["stack"], r["metric"]): r["ratio"] for r in rows}
    assert ratio == {("linux", "tcp_tx_1"): 1.0, ("gvisor", "tcp_tx_1"): 0.25, ("linux", "tcp_rr"): 1.0, ("gvisor", "tcp_rr"): 0.05}
    gate = {(r["stack"], r["metric"]): r["gate"] for r in rows}
    assert gate[("gvisor", "tcp_tx_1")] == {"min_ratio": 0.05, "met": True}
    assert gate[("gvisor", "tcp_rr")] == {"min_ratio": 0.1, "met": False}  # 20x the kernel's latency
    assert gate[("linux", "tcp_tx_1")] is None  # no gate names linux for it


# -- the tools' outputs ------------------------------------------------------------------------


def test_iperf3_tcp_is_what_the_receiver_got_in_gbits():
    one = tools.parse_iperf3(recorded("iperf3_tcp_tx_1.json"))
    assert one.value == pytest.approx(3.515387679584, rel=1e-9)
    assert one.moved == 439615488
    assert one.extra == {"retransmits": 0.0}


def test_iperf3_four_connections_are_summed():
    four = tools.parse_iperf3(recorded("iperf3_tcp_rx_4.json"))
    assert four.value == pytest.approx(11.896553506199, rel=1e-9)
    assert four.moved == 1487536128


def test_iperf3_udp_is_received_mbits_and_loss():
    udp = tools.parse_iperf3(recorded("iperf3_udp_tx.json"))
    assert udp.value == pytest.approx(294.640186205738, rel=1e-9)
    assert udp.moved == 36836800
    assert udp.extra["loss"] == pytest.approx(1.6961817, rel=1e-6)


def test_iperf3_error_is_raised_with_its_reason():
    with pytest.raises(LabError, match="unable to connect to server: Connection refused"):
        tools.parse_iperf3(recorded("iperf3_refused.json"))


@pytest.mark.parametrize("text", ["", "iperf3: error - unable to connect\n", '{"start": {}, "end": {}}', "[]"])
def test_iperf3_output_without_a_receiver_sum_is_refused(text):
    with pytest.raises(LabError):
        tools.parse_iperf3(text)


def test_sockperf_gives_p50_and_p99_round_trips_in_usec():
    rr = tools.parse_sockperf(recorded("sockperf_pp_tcp.txt"))
    assert rr.value == pytest.approx(16.574)
    assert rr.extra["p99"] == pytest.approx(101.920)
    assert rr.extra["observations"] == 24307


def test_sockperf_that_could_not_connect_is_refused_though_it_exits_0():
    with pytest.raises(LabError, match="no p50/p99"):
        tools.parse_sockperf(recorded("sockperf_refused.txt"))


def test_wrk_gives_connections_per_second():
    crr = tools.parse_wrk(recorded("wrk_crr.txt"))
    assert crr.value == pytest.approx(985.02)
    assert crr.extra == {"errors": 0.0, "non_2xx": 0.0}


def test_wrk_rate_of_error_answers_is_refused():
    with pytest.raises(LabError, match="not 2xx"):
        tools.parse_wrk(recorded("wrk_404.txt"))


def test_wrk_that_could_not_connect_is_refused():
    with pytest.raises(LabError, match="no Requests/sec"):
        tools.parse_wrk("")  # wrk prints its refusal on stderr: wrk_refused.stderr.txt
    assert "Connection refused" in recorded("wrk_refused.stderr.txt")


def test_client_command_lines_are_bounded_and_ask_for_parsable_output():
    tx = tools.iperf3_client("198.18.0.1", 2, parallel=4, reverse=True)
    assert tx[:3] == ["iperf3", "-c", "198.18.0.1"] and "-J" in tx and "-R" in tx
    assert tx[tx.index("-t") + 1] == "2" and tx[tx.index("-P") + 1] == "4"
    udp = tools.iperf3_client("198.18.0.1", 1, udp_rate="300M")
    assert udp[udp.index("-b") + 1] == "300M" and "-u" in udp
    rr = tools.sockperf_client("198.18.0.1", 1.5)
    assert rr[rr.index("-t") + 1] == "1.5" and "--full-rtt" in rr
    crr = tools.wrk_client("198.18.0.1", 0.6)
    assert crr[crr.index("-d") + 1] == "1s" and "Connection: close" in crr


# -- CPU -----------------------------------------------------------------------------------------

PROC_STAT = """cpu  100 5 50 9000 7 3 12 0 20 0
cpu0 50 2 25 4500 3 1 6 0 10 0
cpu1 50 3 25 4500 4 2 6 0 10 0
intr 1234
"""


def test_busy_ticks_count_user_nice_system_irq_softirq_of_all_cpus():
    assert cpu.busy_ticks(PROC_STAT) == 100 + 5 + 50 + 3 + 12  # not idle, iowait, steal, guest


def test_busy_ticks_need_the_aggregate_line():
    with pytest.raises(ValueError):
        cpu.busy_ticks("cpu0 1 2 3 4\n")


def test_cpu_per_gb_is_seconds_per_1e9_bytes_moved():
    assert cpu.per_gb(1.5, 3_000_000_000) == pytest.approx(0.5)
    assert cpu.per_gb(1.5, 0) is None
    assert math.isclose(cpu.per_gb(0.2, 500_000_000) or 0, 0.4)


def test_a_cpu_window_counts_busy_seconds_of_this_machine():
    with cpu.CpuWindow() as window:
        deadline = sum(range(200_000))  # a little work: the window must not go negative
    assert deadline > 0
    assert window.seconds >= 0 and window.wall > 0

"""benchmarks.bench_serve reads wrk's text output; a misread would report invented latencies, so it is checked
on real wrk 4.1 output (the p99 line of which ends in a space)."""

from __future__ import annotations

import pytest
from benchmarks.bench_serve import parse_wrk

WRK = """Running 2s test @ http://127.0.0.1:57701/v1/proxy/bench/things
  1 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   273.14ms  262.78ms   1.73s    89.66%
    Req/Sec    62.40     55.40   272.00     95.00%
  Latency Distribution
     50%  203.17ms
     75%  355.04ms
     90%  537.00ms
     99%    1.47s \n  130 requests in 2.11s, 25.01KB read
Requests/sec:     61.71
Transfer/sec:     11.87KB
"""


def test_reads_rate_and_percentiles() -> None:
    result = parse_wrk(WRK)
    assert (result.rps, result.p50_ns, result.p99_ns, result.errors) == (61.71, 203.17e6, 1.47e9, 0)


def test_counts_failures() -> None:
    out = WRK.replace("Requests/sec", "  Socket errors: connect 0, read 2, write 0, timeout 3\n"
                      "  Non-2xx or 3xx responses: 7\nRequests/sec")  # fmt: skip
    assert parse_wrk(out).errors == 12


def test_unreadable_output_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="cannot read wrk output"):
        parse_wrk(WRK.replace("     99%    1.47s \n", ""))

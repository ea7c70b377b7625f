"""scripts/abuse.py: its pure helpers (the attacks themselves run against a real server, not in the suite)."""

from __future__ import annotations

import importlib.util
import io
import sys
import wave
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load():
    spec = importlib.util.spec_from_file_location("abuse", ROOT / "scripts" / "abuse.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("abuse", module)  # dataclasses look their module up by name
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


abuse = _load()


@pytest.mark.parametrize("values, q, expected", [
    ([7.0], 95, 7.0), ([1, 2, 3, 4], 50, 2.5), ([3, 1, 2], 50, 2.0), ([1, 2, 3, 4, 5], 95, 4.8),
    ([10, 20], 0, 10), ([10, 20], 100, 20),
])
def test_percentile_interpolates_between_ranks_like_numpy(values, q, expected):
    assert abuse.percentile(values, q) == pytest.approx(expected)


def test_percentile_of_nothing_is_none():
    assert abuse.percentile([], 50) is None


def test_the_crafted_wav_header_says_1_hz_and_claims_the_asked_duration():
    data = abuse.wav_claiming(1, 5.5 * 3600)
    with wave.open(io.BytesIO(data)) as w:
        assert w.getframerate() == 1
        assert w.getnchannels() == 1 and w.getsampwidth() == 2
        assert w.getnframes() / w.getframerate() == 19800  # 5.5 h of "audio"
    assert len(data) < 40 * 1024  # and a small upload


def test_the_crafted_wav_at_16_khz_is_a_normal_short_file():
    with wave.open(io.BytesIO(abuse.wav_claiming(16000, 0.5))) as w:
        assert (w.getframerate(), w.getnframes()) == (16000, 8000)


def test_prefix_query_has_the_asked_number_of_distinct_prefix_terms():
    terms = abuse.prefix_query(300).split()
    assert len(terms) == len(set(terms)) == 300
    assert terms[:2] == ["a*", "b*"] and all(t.endswith("*") for t in terms)
    assert len(abuse.prefix_query(1000).split()) == 1000  # past the two-letter names


def test_method_names_are_distinct_http_tokens():
    names = abuse.method_names(50)
    assert len(set(names)) == 50
    assert all(n.isalnum() and n.isupper() for n in names)


def test_metric_methods_reads_the_method_label_values():
    text = ('# HELP x\nhttp_requests_total{method="GET",route="/health",status="200"} 3.0\n'
            'http_requests_total{method="ABUSE0XY",route="/health",status="405"} 1.0\nother_total 2.0\n')
    assert abuse.metric_methods(text) == {"GET", "ABUSE0XY"}


def test_formula_cells_are_those_a_spreadsheet_would_run():
    cells = ["=1+2", "+1", "-1", "@SUM(A1)", "\tx", "\rx", "'=1+2", "plain", ""]
    assert abuse.formula_cells(cells) == ["=1+2", "+1", "-1", "@SUM(A1)", "\tx", "\rx"]


def test_summarize_counts_outcomes_most_common_first():
    assert abuse.summarize(["200", "413 audio_too_long", "413 audio_too_long"]) == "413 audio_too_long x2, 200 x1"
    assert abuse.summarize([]) == "-"


def test_format_table_pads_columns_and_shows_none_as_a_dash():
    table = abuse.format_table(["attack", "p95 ms"], [["dates", None], ["slow_uploads", 12]])
    lines = table.splitlines()
    assert lines[0].split() == ["attack", "p95", "ms"]
    assert set(lines[1].replace(" ", "")) == {"-"}
    assert lines[2].split() == ["dates", "-"] and lines[3].split() == ["slow_uploads", "12"]
    assert lines[2].index("-") == lines[3].index("12")  # one column, one start


def test_goals_say_which_were_met_and_what_was_not_measured():
    args = abuse.parse_args(["--health-goal-ms", "200", "--rss-bound-mb", "100"])
    health = abuse.HealthPoller(abuse.Target("https://127.0.0.1:1", False))
    health.samples = [(float(i), 0.005, "200") for i in range(19)] + [(19.0, 0.5, "200"), (20.0, None, "ReadTimeout")]
    rss = abuse.RssSampler(pid=1)
    rss.samples = [(0.0, 50 * 2**20), (1.0, 150 * 2**20)]
    live = abuse.LiveDictation(abuse.Target("https://127.0.0.1:1", False), [b""], 1.0)  # never started
    met = dict(abuse.goals(args, health, live, rss, ffmpeg=[], tmp_files=["restore-x.db"]))
    assert met["/health p95 under 200 ms"].startswith("yes")  # one slow poll in 20 lifts p95 to 30 ms
    assert met["RSS under 100 MB"] == "NO (peak 150 MB)"
    assert met["live dictation kept committing (no gap over 10 s)"] == "not checked"
    assert met["no ffmpeg left"] == "yes" and met["no temp file left"] == "NO (1)"


def test_before_restore_copies_finds_plain_and_timestamped_copies_only(tmp_path):
    for name in ("appliance.db", "appliance.db.before-restore", "appliance.db.before-restore-20261202-120000",
                 "appliance.db-wal"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "tmp").mkdir()
    assert abuse.before_restore_copies(tmp_path) == ["appliance.db.before-restore",
                                                     "appliance.db.before-restore-20261202-120000"]

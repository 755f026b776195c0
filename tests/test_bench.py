"""The benchmark runs end to end on tiny models and reports every number it promises (not a timing test)."""

from __future__ import annotations

import json

from bench.run import main


def test_bench_tiny_reports_every_part_as_positive_numbers(capsys):
    main(["--tiny", "--runs", "1", "--seconds", "2", "--frames", "8", "--new", "8", "--prompt", "16"])
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-2].startswith("| peak RSS")  # the table ends just above the JSON line
    report = json.loads(out[-1])

    assert report["threads"] >= 1 and report["bandwidth_gb_per_s"] > 0 and report["peak_rss_mb"] > 0
    assert sorted((r["variant"], r["num_samples"]) for r in report["lm"]) == [
        ("float32", 1),
        ("float32", 4),
        ("int8", 1),
        ("int8", 4),
    ]  # alone and as one batch of 4
    assert any(line.startswith("| LM decode, 4 sequences as one batch") for line in out)
    for row in report["lm"]:
        for key in ("prefill_tokens_per_s", "tokens_per_s", "floor_steps_per_s"):
            assert row[key] > 0, (row["variant"], key)
    assert report["vqgan"]["codes"] == 43  # 2 s at 21.5 codes/s
    assert report["vqgan"]["encode_s"] > 0 and report["vqgan"]["decode_s"] > 0
    assert set(report["e2e"]) == {"float32", "int8"}
    for row in report["e2e"].values():
        assert row["codes"] == 8 and row["audio_s"] > 0
        assert row["total_s"] > 0 and row["rtf"] > 0

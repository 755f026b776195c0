"""The benchmark runs end to end on tiny models and reports every number it promises (not a timing test)."""

from __future__ import annotations

import json

import pytest
import torch

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
        ("int4", 1),
        ("int4", 4),
        ("int8", 1),
        ("int8", 4),
    ]  # alone, batch of 4
    assert report["cpu"]["model"] and report["cpu"]["model"] in report["device_name"]
    for row in report["lm"]:  # the autotuner's choice, per format
        assert set(row["paths"]) == {row["variant"]}
        assert set(row["paths"][row["variant"]]) == {"decode", "batch_decode", "prefill", "prefill_attention"}
    assert any(line.startswith("| LM paths") for line in out)
    assert any(line.startswith("| LM decode, 4 sequences as one batch") for line in out)
    for row in report["lm"]:
        for key in (
            "prefill_tokens_per_s",
            "tokens_per_s",
            "floor_steps_per_s",
            "bandwidth_gb_per_s",
            "fraction_of_floor",
        ):
            assert row[key] > 0, (row["variant"], key)
    for row in report["lm"]:  # a batch's prompt is prefilled once (and copied): its rate is not counted n times
        seconds = row["prefill_s"]  # (rounded to the millisecond)
        if seconds > 0.001:
            fastest, slowest = row["prompt_tokens"] / (seconds - 0.0005), row["prompt_tokens"] / (seconds + 0.0005)
            assert slowest - 0.05 <= row["prefill_tokens_per_s"] <= fastest + 0.05, row
    assert report["vqgan"]["codes"] == 43  # 2 s at 21.5 codes/s
    assert report["vqgan"]["encode_s"] > 0 and report["vqgan"]["decode_s"] > 0
    assert report["vqgan"]["decode_bf16_s"] > 0 and report["vqgan"]["bf16_snr_db"] > 10  # bfloat16 decode: close
    assert report["vqgan_precision"] in ("float32", "bfloat16") and isinstance(report["vqgan_packed_convs"], bool)
    assert any(line.startswith("| VQGAN decode precision") and "conv" in line for line in out)
    assert set(report["e2e"]) == {"float32", "int8", "int4"}
    for row in report["e2e"].values():
        assert row["codes"] == 8 and row["audio_s"] > 0
        assert row["total_s"] > 0 and row["rtf"] > 0


def test_a_generation_too_short_to_time_is_refused_at_once():
    with pytest.raises(SystemExit) as exit_:
        main(["--tiny", "--new", "1"])
    assert exit_.value.code == 2


def test_prefill_bench_tiny_reports_both_ways_per_length(capsys):
    from bench.prefill import main as prefill_main

    report = prefill_main(["--tiny", "--runs", "1", "--lengths", "8,24", "--formats", "float32,int8"])
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("{")
    for fmt in ("float32", "int8"):
        assert [row["length"] for row in report["formats"][fmt]] == [8, 24]
        for row in report["formats"][fmt]:
            assert row["sequential_s"] > 0 and row["batched_s"] > 0 and row["speedup"] > 0


def test_streams_bench_tiny_reports_both_modes_and_shares(capsys):
    from bench.streams import main as streams_main

    report = streams_main(["--tiny", "--runs", "1", "--frames", "8", "--reference-seconds", "1", "--requests", "2"])
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("{")
    assert report["speedup"] > 0 and report["prompt_tokens"] > 0
    for mode in ("together", "together_unpacked", "one_by_one"):
        row = report["modes"][mode]
        assert row["wall_s"] > 0 and row["first_audio_s"] > 0 and row["audio_s"] > 0
        assert row["prefill_s"] > 0 and row["step_s"] > 0 and row["vqgan_s"] > 0


def test_a_forced_variant_may_name_its_batch_decode_path():
    """`--variants int8:A/B`: A for one sequence, B for batches (two settings of one kernel), then back."""
    from bench.lm import forced_path, used_paths
    from bench.models import random_official_lm, tiny_lm_config
    from core.lm import paths
    from core.lm.autotune import model_paths
    from core.lm.quantize import quantize_model

    settings = [c for c in paths.decode_candidates("int8") if paths.arithmetic(c) == "kernel"]
    if len(settings) < 2:
        pytest.skip("needs two kernel settings (the C++ kernels)")
    model = quantize_model(random_official_lm(torch.device("cpu"), torch.float32, config=tiny_lm_config()), "int8")
    before = dict(paths.chosen("int8"))
    one, batch = settings[1], settings[0]
    with forced_path(f"int8:{one}/{batch}", model):
        assert (paths.chosen("int8")["decode"], paths.chosen("int8")["batch_decode"]) == (one, batch)
    with forced_path(f"int8:{one}", model):
        assert paths.chosen("int8")["decode"] == paths.chosen("int8")["batch_decode"] == one
    assert paths.chosen("int8") == before
    # The table's paths row names what the forced variant ran, not the model's own choice.
    shown = used_paths(f"int8:{one}/{batch}", model)["int8"]
    assert (shown["decode"], shown["batch_decode"]) == (one, batch)
    assert used_paths("int8", model)["int8"]["decode"] == model_paths(model)["int8"]["decode"]


def test_the_floor_beside_a_run_is_the_higher_reading_around_it(monkeypatch):
    from bench.measure import ReadBandwidth

    bandwidth = ReadBandwidth(torch.device("cpu"), megabytes=8)
    assert bandwidth() > 0 and bandwidth.best_reader in bandwidth.readers  # later readings use the best setting
    assert bandwidth() > 0
    readings, calls = iter([3.0, 5.0]), []
    monkeypatch.setattr(ReadBandwidth, "__call__", lambda self: next(readings))
    assert bandwidth.around(lambda: calls.append("run") or "result") == ("result", 5.0)
    assert calls == ["run"]

"""`python -m bench.s1 --tiny` runs every part and reports numbers that hang together."""

from __future__ import annotations

from bench.run import main as bench_main
from bench.s1 import OFFICIAL_FRAME_RATE, bytes_per_frame, main, random_dual_ar


def test_tiny_bench_reports_every_row_per_format(capsys):
    report = bench_main(["--family", "openaudio-s1-mini", "--tiny", "--runs", "1", "--frames", "3", "--seconds", "0.5"])
    assert report["device"] == "cpu" or report["device"].startswith("cuda")
    c = report["codec"]
    assert c["frames"] == 16 and c["decode_s"] > 0 and c["stream_decode_s"] > 0 and c["request_frames"] == 3
    for fmt, d in report["dual_ar"].items():
        assert d["frames_per_s"] > 0 and d["prefill_tokens_per_s"] > 0 and d["batch_frames_per_s"] > 0, fmt
        floor = d["bandwidth_gb_per_s"] / d["weights_gb"]  # (the bandwidth read beside its runs)
        assert abs(d["floor_frames_per_s"] - floor) / d["floor_frames_per_s"] < 0.01, fmt
        audio_s = d["frames"] / OFFICIAL_FRAME_RATE
        compute_s = d["prefill_s"] + (d["frames"] - 1) / d["frames_per_s"] + c["request_decode_s"]
        assert abs(d["end_to_end_rtf"] - compute_s / audio_s) <= 0.01 * d["end_to_end_rtf"] + 1e-3, fmt
        if report["device"] == "cpu":
            assert d["paths"][fmt]["decode"] and d["step_threads"].endswith(("thread", "threads"))
    if report["device"] == "cpu":
        assert c["decode_bf16_s"] > 0 and c["bf16_speedup"] > 0 and c["bf16_snr_db"] > 10  # bfloat16: close
        assert list(report["dual_ar"]) == ["float32", "int8", "int4"]
        weights = {f: d["weights_gb"] for f, d in report["dual_ar"].items()}
        assert weights["float32"] > weights["int8"] > weights["int4"]
    out = capsys.readouterr().out
    assert "decode floor" in out and "codec streamed decode" in out and "as one batch" in out


def test_weights_read_per_frame_count_the_fast_stack_once_per_codebook():
    import torch

    model = random_dual_ar(torch.device("cpu"), torch.float32, tiny=True)
    fast = sum(
        p.numel() for n, p in model.named_parameters() if n.startswith(("fast_layers.", "fast_norm.", "fast_output."))
    )
    slow = sum(p.numel() for n, p in model.named_parameters() if n.startswith(("layers.", "norm.", "output.")))
    assert bytes_per_frame(model) == 4 * (slow + model.config.num_codebooks * fast)


def test_the_bench_leaves_denormals_as_it_found_them():
    """It flushes denormals while it measures; a caller's float arithmetic must not inherit that."""
    main(["--tiny", "--runs", "1", "--frames", "2", "--seconds", "0.2", "--device", "cpu", "--only", "lm"])
    smallest_normal = float("2.2250738585072014e-308")
    assert smallest_normal / 2 != 0.0
